"""What the operator makes of a pod and its engine's answer (pods.py)."""

from __future__ import annotations

from typing import Any

from rlfleet_operator.pods import apply_probe, view_of_pod


def engine_pod(
    *,
    ready: bool = False,
    started: bool = False,
    restarts: int = 0,
    state: dict[str, Any] | None = None,
    last: dict[str, Any] | None = None,
) -> dict[str, Any]:
    cs: dict[str, Any] = {
        "name": "engine",
        "ready": ready,
        "started": started,
        "restartCount": restarts,
        "state": state or {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
        "lastState": {"terminated": last} if last else {},
    }
    return {
        "metadata": {"name": "pool-0", "namespace": "ml"},
        "status": {
            "phase": "Running",
            "podIP": "127.0.0.9",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [cs],
        },
    }


REFUSED = "GET /v1/is_paused: ConnectError: All connection attempts failed"
CRASHED = {"exitCode": 2, "reason": "Error"}


def test_first_start_not_answering_yet_is_starting() -> None:
    view = view_of_pod(engine_pod())
    apply_probe(view, False, {}, REFUSED)
    assert (view.state, view.stuck, view.message) == ("Starting", False, REFUSED)


def test_crash_looping_pod_is_failed_with_its_reason_not_starting() -> None:
    waiting = {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5.0s"}}
    view = view_of_pod(engine_pod(restarts=3, state=waiting, last=CRASHED))
    apply_probe(view, False, {}, REFUSED)
    assert view.state == "Failed" and view.stuck
    assert view.message == "CrashLoopBackOff: back-off 5.0s (exit code 2 (Error), 3 restart(s))"


def test_restarted_after_a_crash_and_not_up_yet_is_failing() -> None:
    view = view_of_pod(engine_pod(restarts=1, last=CRASHED))
    apply_probe(view, False, {}, REFUSED)
    assert view.state == "Failed" and view.stuck
    assert view.message == "Restarting: exit code 2 (Error), 1 restart(s)"


def test_restarted_and_answering_again_is_healthy() -> None:
    view = view_of_pod(engine_pod(ready=True, started=True, restarts=1, last=CRASHED))
    apply_probe(view, True, {"state": "paused", "weights_version": "v1"}, None)
    assert (view.state, view.stuck, view.message, view.weights_version) == (
        "Paused",
        False,
        "",
        "v1",
    )


def test_was_up_and_stopped_answering_is_unreachable() -> None:
    view = view_of_pod(engine_pod(ready=False, started=True))
    apply_probe(view, False, {}, "GET /v1/is_paused: timed out after 5s")
    assert view.state == "Unreachable" and not view.stuck


def test_engine_process_not_up_behind_its_api_server_is_starting() -> None:
    view = view_of_pod(engine_pod(started=True))
    apply_probe(view, True, {"is_paused": False, "state": "starting", "weights_version": ""}, None)
    assert (view.state, view.reachable, view.weights_version) == ("Starting", False, None)


def test_probe_answer_carries_digest_and_pause_mode_into_status():
    from rlfleet_operator.pods import ReplicaView, apply_probe

    view = ReplicaView(pod="p-0", ip="127.0.0.9", ready=True, live=True, state="Running")
    apply_probe(
        view,
        True,
        {
            "is_paused": True,
            "state": "paused",
            "weights_version": "v2",
            "weights_digest": "ab" * 32,
            "mode": "retract",
        },
        None,
    )
    out = view.to_status()
    assert out["state"] == "Paused" and out["weightsVersion"] == "v2"
    assert out["weightsDigest"] == "ab" * 32 and out["pauseMode"] == "retract"
