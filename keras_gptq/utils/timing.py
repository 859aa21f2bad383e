"""Wall time per stage of a run, without passing a timer around.

`record()` starts a `StageTimer` for the code inside it; anywhere below,
`stage(name)` charges the time spent in its body to `name`. Stages nest
exclusively: entering a stage pauses the one around it, so a Hessian update
made from inside a forward pass (the input-recording callback) counts as
Hessian time, not forward time, and the stages never add up to more than
the wall time. Outside `record()`, `stage` does nothing.

    with timing.record() as timer:
        with timing.stage("forward"):
            ...
    timer.seconds  # {"forward": 1.2}
"""

import contextlib
import contextvars
import time

_ACTIVE = contextvars.ContextVar("keras_gptq_stage_timer", default=None)


class StageTimer:
    """Exclusive wall seconds per stage name, in first-use order.

    Attributes:
        seconds: `{stage name: seconds}`.
    """

    def __init__(self):
        self.seconds = {}
        self._stack = []  # [name, start of its current slice]

    def _charge(self, now):
        name, since = self._stack[-1]
        self.seconds[name] = self.seconds.get(name, 0.0) + (now - since)

    @contextlib.contextmanager
    def stage(self, name):
        """Charges the body's time (less any nested stage's) to `name`."""
        now = time.perf_counter()
        if self._stack:
            self._charge(now)
        self.seconds.setdefault(name, 0.0)
        self._stack.append([name, now])
        try:
            yield
        finally:
            now = time.perf_counter()
            self._charge(now)
            self._stack.pop()
            if self._stack:
                self._stack[-1][1] = now


@contextlib.contextmanager
def record():
    """Makes a new `StageTimer` the active one inside; yields it."""
    timer = StageTimer()
    token = _ACTIVE.set(timer)
    try:
        yield timer
    finally:
        _ACTIVE.reset(token)


def stage(name):
    """A context manager charging its body to stage `name` of the active
    timer (see `record`); a no-op when none is active."""
    timer = _ACTIVE.get()
    return contextlib.nullcontext() if timer is None else timer.stage(name)
