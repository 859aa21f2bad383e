"""The native CPU matmul for packed levels under JAX (`cpu_kernel.cc`).

`cpu_kernel.cc` is an XLA FFI handler that multiplies float32 rows by
packed 2-, 4- or 8-bit levels with contiguous groups, without a float copy
of the weight matrix (the math and the threading are in its header). It
ships as source inside the package and is compiled here, on first use,
with the system C++ compiler, for this machine's CPU (`-march=native`).

The shared library is cached in `$KERAS_GPTQ_CACHE` (default
`~/.cache/keras_gptq`) under a name keyed by the source, the jaxlib
version, the compiler and its flags and the CPU's feature flags, so one
cache directory serves several machines, and written by an atomic rename,
so parallel processes do not clash. Where there is no compiler, the build
fails or the library does not load, `available()` is False, one warning is
logged, and packed layers keep the reference path.

`KERAS_GPTQ_CPU_KERNEL=0` turns it off; `KERAS_GPTQ_CPU_KERNEL_THREADS`
sets how many chunks of rows a call is cut into, shared with XLA's
intra-op pool (default: `threads`, one for decode, one a CPU for
prefill).
"""

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile

import numpy as np

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      "cpu_kernel.cc")
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-shared", "-fPIC",
         "-std=c++17")
BITS = (2, 4, 8)
# Rows per call up to which the byte-plane path runs (8 bits, groups not of
# whole 64-byte chunks, CPUs without AVX-512BW); above, the reference path.
# Single calls of 20 SmolLM2-shaped matrices broke even near 128 rows
# (benchmarks/RESULTS.md). The lookup path has no limit.
MAX_TOKENS = 64
# Rows per call from which the kernel takes its blocked path (`max_tokens`;
# `kBlockedFrom` in cpu_kernel.cc).
BLOCKED_FROM = 16
_TARGET = "keras_gptq_matmul{bits}"

logger = logging.getLogger("keras_gptq")


def enabled():
    """Whether the environment allows the kernel (`KERAS_GPTQ_CPU_KERNEL`,
    default on)."""
    return os.environ.get("KERAS_GPTQ_CPU_KERNEL", "1").lower() not in (
        "0", "false", "off", "no")


def applies(bits, group_size, columns):
    """Whether the kernel handles a layer of these settings: 2, 4 or 8
    bits, and groups that start on a byte (`group_size` a multiple of the
    levels a byte holds, or per-channel)."""
    return bits in BITS and (group_size == -1 or
                             group_size * bits % 8 == 0) and columns > 0


def group_bytes(bits, group_size, packed_width):
    """Bytes of a packed row that one group covers."""
    return packed_width if group_size == -1 else group_size * bits // 8


def max_tokens(bits, group_size, packed_width):
    """Rows per call up to which the kernel beats the reference path.

    None (no limit) on a CPU with AVX-512BW where groups cover whole 32-bit
    words (or one group a row): from `BLOCKED_FROM` rows the kernel
    dequantizes blocks of 32 weight rows into a small float buffer and
    multiplies them by all rows at once. Elsewhere `MAX_TOKENS`.
    """
    library = _library()
    if library is not None and library.KerasGptqLookup() and (
            group_size == -1
            or group_bytes(bits, group_size, packed_width) % 4 == 0):
        return None
    return MAX_TOKENS


def available():
    """Whether the kernel is built, loaded and registered with JAX (builds
    it on the first call; False, with one warning, where that fails)."""
    return enabled() and _library() is not None


def matmul(rows, packed, scale, zero, bits, group_size, perm=None):
    """`rows[:, perm] @ W.T` by the native kernel.

    Args:
        rows: float32 `[tokens, in]` JAX array.
        packed: uint8 `[out, packed_width]` levels.
        scale: float32 `[out, groups]`; zero: uint8 `[out, groups]`.
        bits: 2, 4 or 8.
        group_size: columns a group, or -1.
        perm: int32 `[in]`, the column of `rows` each stored column of `W`
            takes (act-order layers, sorted by group), or None (in order).

    Returns:
        float32 `[tokens, out]`.

    Raises:
        RuntimeError: the kernel is not `available()`.
    """
    import jax
    import jax.numpy as jnp
    if not available():
        raise RuntimeError("the keras_gptq CPU kernel is not available")
    out = jax.ShapeDtypeStruct((rows.shape[0], packed.shape[0]),
                               np.float32)
    call = jax.ffi.ffi_call(_TARGET.format(bits=bits), out)
    perm = jnp.zeros((0,), jnp.int32) if perm is None else perm
    return call(rows, perm, packed, scale, zero,
                group_bytes=np.int64(group_bytes(bits, group_size,
                                                 packed.shape[1])),
                threads=np.int64(threads(rows.shape[0])))


def threads(tokens):
    """Chunks of rows a call of `tokens` rows is cut into (shared with XLA's
    intra-op pool): `KERAS_GPTQ_CPU_KERNEL_THREADS` if set; else one below
    `BLOCKED_FROM` rows (decode: two decoded 7% slower than one on the
    loaded 2-core machine of `benchmarks/RESULTS.md`) and one a CPU from
    there (prefill is compute-bound, and the float matmul it replaces uses
    every core)."""
    value = os.environ.get("KERAS_GPTQ_CPU_KERNEL_THREADS")
    if value:
        return max(1, int(value))
    return 1 if tokens < BLOCKED_FROM else os.cpu_count() or 1


def cache_dir():
    """Where compiled kernels are kept (`$KERAS_GPTQ_CACHE` or
    `~/.cache/keras_gptq`)."""
    return os.environ.get("KERAS_GPTQ_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "keras_gptq")


def _compiler():
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which(
        "g++")


def _cpu_flags():
    """The CPU's feature flags (part of the cache key: `-march=native`
    code may not run on another CPU)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return platform.processor() + platform.machine()


def library_path(compiler, include_dir):
    """The cache path of the library built by `compiler` (the key: source,
    jaxlib version, compiler and its version, flags, CPU flags)."""
    import jaxlib
    version = subprocess.run([compiler, "--version"], capture_output=True,
                             text=True, timeout=60).stdout
    key = hashlib.sha256()
    with open(SOURCE, "rb") as f:
        key.update(f.read())
    for part in (jaxlib.__version__, compiler, version, " ".join(FLAGS),
                 include_dir, _cpu_flags(), sys.platform):
        key.update(b"\0" + part.encode())
    return os.path.join(cache_dir(),
                        f"keras_gptq_cpu_kernel-{key.hexdigest()[:20]}.so")


def build(compiler, include_dir, path):
    """Compiles `SOURCE` to `path` (atomic: a temporary file in the same
    directory, then a rename). Raises on failure."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(path))
    os.close(fd)
    try:
        done = subprocess.run(
            [compiler, *FLAGS, f"-I{include_dir}", SOURCE, "-o", tmp],
            capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip()[-2000:])
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@functools.lru_cache(maxsize=None)
def _library():
    """The loaded and registered library, built once a process, or None."""
    return _load()


def _load():
    """Builds (if not cached), loads and registers the library; None, with
    one logged warning, where any step fails."""
    try:
        import jax
        compiler = _compiler()
        if compiler is None:
            raise RuntimeError("no C++ compiler found (set CXX)")
        include_dir = jax.ffi.include_dir()
        path = library_path(compiler, include_dir)
        if not os.path.exists(path):
            build(compiler, include_dir, path)
        lib = ctypes.cdll.LoadLibrary(path)
        for bits in BITS:
            jax.ffi.register_ffi_target(
                _TARGET.format(bits=bits),
                jax.ffi.pycapsule(getattr(lib, f"KerasGptqMatmul{bits}")),
                platform="cpu")
        return lib
    except Exception as e:  # noqa: BLE001 (any failure: the reference path)
        logger.warning("keras_gptq: the native CPU kernel is unavailable "
                       "(%s); packed layers use the reference path.", e)
        return None
