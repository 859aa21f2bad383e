"""Per-stage wall time (keras_gptq.utils.timing): stages are exclusive, so
they never add up to more than the wall time of the run."""

import time

import pytest

from keras_gptq.utils import timing

pytestmark = pytest.mark.one_backend  # pure Python: no backend involved

PAUSE = 0.02  # seconds slept inside a stage


def test_nested_stage_is_charged_to_itself_only():
    with timing.record() as timer:
        start = time.perf_counter()
        with timing.stage("forward"):
            time.sleep(PAUSE)
            with timing.stage("hessian"):
                time.sleep(2 * PAUSE)
            time.sleep(PAUSE)
        wall = time.perf_counter() - start
    forward, hessian = timer.seconds["forward"], timer.seconds["hessian"]
    assert forward >= 2 * PAUSE and hessian >= 2 * PAUSE, timer.seconds
    # The nested slice is not counted twice.
    assert forward < 2 * PAUSE + hessian
    assert forward + hessian <= wall


def test_repeated_stage_accumulates_and_keeps_first_use_order():
    with timing.record() as timer:
        for _ in range(3):
            with timing.stage("solve"):
                time.sleep(PAUSE)
            with timing.stage("grid"):
                pass
    assert list(timer.seconds) == ["solve", "grid"]
    assert timer.seconds["solve"] >= 3 * PAUSE


def test_stage_outside_a_timed_run_does_nothing():
    with timing.stage("forward"):
        pass
    with timing.record() as timer:
        pass
    assert timer.seconds == {}


def test_stage_time_is_kept_when_the_body_raises():
    with timing.record() as timer:
        try:
            with timing.stage("write"):
                time.sleep(PAUSE)
                raise KeyError("boom")
        except KeyError:
            pass
        with timing.stage("solve"):
            pass
    assert timer.seconds["write"] >= PAUSE
    assert "solve" in timer.seconds


def _sleep_in(stage_name):
    def work(seconds):
        with timing.stage(stage_name):
            time.sleep(seconds)
        return seconds * 10
    return work


def test_parallel_map_keeps_order_and_charges_the_wall_time():
    with timing.record() as timer:
        start = time.perf_counter()
        with timing.stage("solve"):
            out = timing.parallel_map(_sleep_in("grid"),
                                      [2 * PAUSE, PAUSE, 3 * PAUSE], 3)
        wall = time.perf_counter() - start
    assert out == [20 * PAUSE, 10 * PAUSE, 30 * PAUSE]
    # The threads overlapped: "grid" gets about the wall time of the
    # longest call, not the 6 pauses the threads slept in all.
    assert 3 * PAUSE * 0.9 <= timer.seconds["grid"] < 5 * PAUSE
    assert timer.seconds["grid"] + timer.seconds["solve"] <= wall + 1e-9


def test_parallel_map_with_one_worker_is_a_plain_loop():
    import threading
    seen = []

    def work(item):
        seen.append(threading.current_thread())
        return item + 1

    assert timing.parallel_map(work, [1, 2, 3], 1) == [2, 3, 4]
    assert set(seen) == {threading.current_thread()}
    assert timing.parallel_map(work, [5], 4) == [6]


def test_parallel_map_raises_the_first_error():
    def work(item):
        if item == 2:
            raise ValueError("bad item")
        return item

    with pytest.raises(ValueError, match="bad item"):
        timing.parallel_map(work, [1, 2, 3], 2)


def test_parallel_map_without_a_timer():
    assert timing.parallel_map(_sleep_in("grid"), [PAUSE, PAUSE], 2) == [
        10 * PAUSE, 10 * PAUSE]
