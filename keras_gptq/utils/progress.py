"""Progress bars: tqdm, with elapsed time and ETA, on stderr.

One place decides how progress looks; `verbose=False` gives a disabled bar
that accepts the same calls and prints nothing.
"""

import sys

from tqdm.auto import tqdm


def bar(total, desc, unit, verbose, position=0):
    """Returns a tqdm bar (a silent one when `verbose` is False).

    Args:
        total: the number of steps.
        desc: what is counted, e.g. "calibration".
        unit: the name of one step, e.g. "batch".
        verbose: show the bar.
        position: the line of the bar when several are shown at once.
    """
    return tqdm(total=total, desc=desc, unit=unit, disable=not verbose,
                position=position, file=sys.stderr, dynamic_ncols=True)
