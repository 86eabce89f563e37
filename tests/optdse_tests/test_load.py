"""The load generator against a real optdse-serve, and the window cut on its real records."""

from __future__ import annotations

import numpy as np
import psutil

import pytest

from optdse.deploy.base import free_port
from optdse.load import LoadPlan, run_load, stop_helpers
from optdse.measurement import cut_window
from optdse.payloads import build_payload
from optdse.stability import StabilityRule
from tests.serving_process import ServerProcess

pytestmark = pytest.mark.slow  # the real-system layer: real servers, replicas, containers or studies


def plan(targets: tuple[str, ...], threads: int, requests: int, file_size: int = 4, processes: int = 0) -> LoadPlan:
    payload = build_payload("mnist", file_size)
    return LoadPlan(targets=targets, bodies=payload.bodies, batches=payload.batches, threads=threads,
                    requests=requests, processes=processes, deadline_s=10)


def test_every_request_is_sent_timed_and_answered(server: ServerProcess) -> None:
    result = run_load(plan((f"127.0.0.1:{server.port}",), threads=6, requests=300, processes=2))
    assert len(result.send) == 300 and result.ok.all() and result.error_codes == {}
    assert sorted(np.bincount(result.thread).tolist()) == [50] * 6  # split evenly over 6 threads
    assert np.all(np.diff(result.send) >= 0)  # sorted by send time
    assert result.started <= result.send[0] and result.send[-1] + result.latency[-1] <= result.finished
    assert len(result.client_cpu_seconds) == 2 and result.client_cpu_cores > 0


def test_requests_spread_over_replicas_and_failures_are_counted_not_fatal(server: ServerProcess) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nobody listens: every request there fails
    result = run_load(plan((f"127.0.0.1:{server.port}", dead), threads=2, requests=100, processes=1))
    assert len(result.send) == 100
    assert result.ok.sum() == 50 and result.error_codes == {"UNAVAILABLE": 50}


def test_a_reply_with_the_wrong_shape_is_an_error(server: ServerProcess) -> None:
    honest = plan((f"127.0.0.1:{server.port}",), threads=1, requests=5, file_size=3)
    lying = LoadPlan(**{**honest.__dict__, "batches": (4,)})  # expects 4 rows, the server answers 3
    result = run_load(lying)
    assert result.error_codes == {"BAD_RESPONSE": 1}


def test_the_window_cuts_warm_up_and_cool_down(server: ServerProcess) -> None:
    result = run_load(plan((f"127.0.0.1:{server.port}",), threads=4, requests=400))
    window = cut_window(result, warmup_fraction=0.1)
    inside = result.send[window.mask]
    assert window.mask[:40].sum() == 0 and window.mask[40]  # the first 10% by send time are warm-up
    first_thread_done = min(result.send[result.thread == t].max() for t in range(4))
    assert window.end == first_thread_done and (inside < first_thread_done).all()
    assert 200 < window.mask.sum() < 360


def test_a_duration_ends_the_run_before_its_requests_are_sent(server: ServerProcess) -> None:
    bounded = LoadPlan(**{**plan((f"127.0.0.1:{server.port}",), threads=3, requests=10**6).__dict__,
                          "duration_s": 1.0})
    result = run_load(bounded, timeout_s=60)
    assert 0 < len(result.send) < 10**6 and result.ok.all()
    assert result.send[-1] - result.started < 1.0  # nothing is sent after the time is up ...
    assert sorted(set(result.thread.tolist())) == [0, 1, 2]  # ... by any thread,
    assert result.finished - result.started < 1.0 + 10  # and the run ends within a request's deadline
    window = cut_window(result, warmup_fraction=0.1)
    assert window.end > window.start and window.mask.sum() > 0.5 * len(result.send)


def test_the_load_generator_s_helper_processes_stop_before_the_command_returns(server: ServerProcess) -> None:
    """A command stops the fork server and resource tracker itself (cli.main), rather than
    leaving them to exit after it: `stop_helpers` waits for both, and the next run starts them again."""

    def helpers() -> list[str]:
        found = []
        for child in psutil.Process().children():
            try:
                command = " ".join(child.cmdline())
            except psutil.Error:
                continue
            found += [name for name in ("forkserver", "resource_tracker") if name in command]
        return sorted(found)

    first = run_load(plan((f"127.0.0.1:{server.port}",), threads=2, requests=20))
    assert first.ok.all() and helpers() == ["forkserver", "resource_tracker"]
    stop_helpers()
    assert helpers() == []
    assert run_load(plan((f"127.0.0.1:{server.port}",), threads=2, requests=20)).ok.all()


def test_under_a_stability_rule_each_window_was_judged_on_every_request_sent_in_it(server: ServerProcess) -> None:
    """The workers' watermark: when a window was judged (live, while the load ran), every
    request sent in it had been reported. The windows' live counts equal the final records'."""
    rule = StabilityRule(window_s=0.5, windows=3, tolerance=0.5, warmup_s=0.2, max_s=10)
    for open_loop in (False, True):
        changes = {"rate_rps": 200.0} if open_loop else {}
        unbounded = LoadPlan(**{**plan((f"127.0.0.1:{server.port}",), threads=3, requests=1).__dict__,
                                "requests": None, "duration_s": rule.max_s, **changes})
        result = run_load(unbounded, timeout_s=60, rule=rule)
        judge = result.judge
        assert judge is not None and judge.stable and result.stopped_at == judge.kept()[-1].end
        for window in judge.closed:
            inside = (result.send >= window.start) & (result.send < window.end)
            assert window.answered == int((inside & result.ok).sum()) > 0, (open_loop, window)
        assert result.finished - result.stopped_at < 1.0  # it stopped at the rule, not at max_s
        window = cut_window(result, warmup_fraction=0.1)  # the fixed-count fraction plays no part
        assert (window.start, window.end) == (judge.kept()[0].start, judge.kept()[-1].end)
