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

import concurrent.futures
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
    def shared(self):
        """Pauses the current stage and yields a dict `{stage: seconds}`
        for the body to fill with the stage times of work it ran on other
        threads. On exit the body's wall time is charged to those stages:
        each gets its seconds, scaled down in proportion when the threads
        overlapped (together longer than the wall time); the rest of the
        wall time is charged to no stage (a report counts it as
        "other"). Stages then still add up to at most the wall time, and
        no stage gets more than its threads spent in it."""
        now = time.perf_counter()
        if self._stack:
            self._charge(now)
        weights = {}
        try:
            yield weights
        finally:
            end = time.perf_counter()
            total = sum(weights.values())
            scale = min(1.0, (end - now) / total) if total > 0 else 0.0
            for name, seconds in weights.items():
                self.seconds[name] = (self.seconds.get(name, 0.0)
                                      + seconds * scale)
            if self._stack:
                self._stack[-1][1] = end


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


def parallel_map(fn, items, workers):
    """`[fn(item) for item in items]`, run on up to `workers` threads.

    Results come back in `items`' order. The stages `fn` enters on the
    worker threads are timed there, and the section's wall time is charged
    to them in proportion (`StageTimer.shared`). With one worker or one
    item everything runs on the calling thread, as a plain loop.
    """
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    timer = _ACTIVE.get()

    def timed(item):
        with record() as own:
            out = fn(item)
        return out, own.seconds

    with (timer.shared() if timer is not None
          else contextlib.nullcontext({})) as weights:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            pairs = list(pool.map(timed, items))
        for _, seconds in pairs:
            for name, value in seconds.items():
                weights[name] = weights.get(name, 0.0) + value
    return [out for out, _ in pairs]
