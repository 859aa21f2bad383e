"""One BLAS thread for the per-layer math (numpy's and scipy's OpenBLAS).

The solver's matrices are small (hundreds to a few thousand columns) and
its LAPACK calls (`potrf`, `trtri`) synchronise their threads at every
block. On a machine whose cores are busy (other processes, or this run's
own backend threads) a thread that waits for a descheduled partner spins:
on the shared 2-core machine `benchmarks/layer_speed.py` measured
`solve_gptq` up to 12x slower with OpenBLAS's default 2 threads than with 1
(the factorisation alone up to 70x at load 17; numbers in
`benchmarks/RESULTS.md`). OpenBLAS's
threaded `potrf` also rounds differently from its single-threaded one, so
one thread makes the integers independent of the machine's core count.

    with blas.single_threaded():
        ...  # numpy / scipy BLAS and LAPACK calls run on one thread
"""

import contextlib
import functools

import threadpoolctl


@functools.lru_cache(maxsize=None)
def _controller():
    # Built on first use, once numpy's and scipy's BLAS libraries are
    # loaded (a controller only sees the libraries loaded when it is made).
    import scipy.linalg  # noqa: F401  (loads scipy's OpenBLAS)

    return threadpoolctl.ThreadpoolController()


@contextlib.contextmanager
def single_threaded():
    """Runs the body with every loaded BLAS library limited to one thread.

    Restores the previous thread counts on exit; nests freely.
    """
    with _controller().limit(limits=1, user_api="blas"):
        yield
