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
