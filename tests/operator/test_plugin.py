"""kubectl-inferencepool: argument parsing, patch bodies, wait predicates, rendering."""

from __future__ import annotations

from typing import Any

import pytest
from rich.console import Console

from rlfleet_operator import plugin


def parse(*argv: str) -> Any:
    return plugin.build_parser().parse_args(list(argv))


def test_pause_args_and_patch() -> None:
    args = parse(
        "-n", "ml", "pause", "rollout", "--wait", "--timeout", "30", "--drain-timeout", "5"
    )
    assert (args.namespace, args.name, args.wait, args.timeout) == ("ml", "rollout", True, 30.0)
    assert plugin.patch_body(args) == {"spec": {"paused": True, "pause": {"timeoutSeconds": 5.0}}}
    assert plugin.patch_body(parse("pause", "rollout")) == {"spec": {"paused": True}}
    with pytest.raises(SystemExit):
        plugin.patch_body(parse("pause", "rollout", "--drain-timeout", "0"))


def test_resume_sync_status_args() -> None:
    assert plugin.patch_body(parse("resume", "r", "--wait")) == {"spec": {"paused": False}}
    sync = parse("sync-weights", "r", "--version", "step-42", "--path", "/ckpt/step-42")
    assert plugin.patch_body(sync) == {
        "spec": {"weights": {"version": "step-42", "path": "/ckpt/step-42"}}
    }
    rollback = parse(
        "sync-weights", "r", "--version", "v", "--path", "/p", "--failure-policy", "Rollback"
    )
    assert plugin.patch_body(rollback)["spec"]["weights"]["failurePolicy"] == "Rollback"
    assert plugin.patch_body(parse("status", "r")) is None
    with pytest.raises(SystemExit):
        parse("sync-weights", "r", "--version", "v")  # --path is required


def pool(gen: int, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "r", "namespace": "ml", "generation": gen},
        "spec": {"paused": True},
        "status": status,
    }


def cond(type_: str, status: str, reason: str, gen: int) -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "observedGeneration": gen}


def test_wait_predicates_need_the_patched_generation() -> None:
    stale = pool(3, conditions=[cond("Paused", "True", "AllReplicasPaused", 2)])
    fresh = pool(3, conditions=[cond("Paused", "True", "AllReplicasPaused", 3)])
    assert not plugin.done("pause", stale, 3) and plugin.done("pause", fresh, 3)
    resumed = pool(4, conditions=[cond("Paused", "False", "Running", 4)])
    resuming = pool(4, conditions=[cond("Paused", "False", "Resuming", 4)])
    assert plugin.done("resume", resumed, 4) and not plugin.done("resume", resuming, 4)
    synced = pool(
        5, weightsVersion="v2", conditions=[cond("WeightsSynced", "True", "AllReplicasSynced", 5)]
    )
    assert plugin.done("sync-weights", synced, 5, "v2") and not plugin.done(
        "sync-weights", synced, 5, "v3"
    )


def test_render_status_table() -> None:
    p = pool(
        2,
        phase="Paused",
        ready="2/2",
        replicas=2,
        pausedReplicas=2,
        weightsVersion="v1",
        conditions=[cond("Paused", "True", "AllReplicasPaused", 2)],
        replicaStatuses=[
            {
                "pod": "r-0",
                "ip": "10.0.0.5",
                "ready": True,
                "state": "Paused",
                "weightsVersion": "v1",
                "weightsDigest": "9f2c" + "0" * 60,
                "pauseMode": "retract",
                "retractedRequests": 4,
                "keptRequests": 0,
            },
            {
                "pod": "r-1",
                "state": "Paused",
                "weightsVersion": "v0",
                "fenced": True,
                "fencedReason": "update_weights: checkpoint missing",
            },
        ],
        rollback={"failedVersion": "v2", "restoredVersion": "v1", "reason": "r-1 failed"},
        lastPause={
            "startedAt": "a",
            "completedAt": "b",
            "durationSeconds": 1.5,
            "abortedRequests": 3,
        },
    )
    console = Console(record=True, width=160)
    console.print(plugin.render(p))
    narrow = Console(record=True, width=80)  # a plain terminal: pod names are never cut
    narrow.print(plugin.render(p))
    narrow_text = narrow.export_text()
    assert "r-0" in narrow_text and "r-1" in narrow_text
    text = console.export_text()
    assert (
        "ml/r" in text
        and "r-0" in text
        and "10.0.0.5" in text
        and "AllReplicasPaused" in text
        and "aborted=3" in text
    )
    assert "retract 4r/0k" in text and "v1 9f2c0000" in text
    assert "fenced" in text and "checkpoint missing" in text
    assert "rollback: v2 → v1" in text


class FakeAPI:
    default_namespace = "ml"

    def __init__(self) -> None:
        self.patches: list[tuple[str, str, dict[str, Any]]] = []
        self.gets = 0

    def patch(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self.patches.append((namespace, name, body))
        return pool(7)

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        self.gets += 1
        ok = self.gets >= 2
        return pool(
            7, conditions=[cond("Paused", "True" if ok else "False", "AllReplicasPaused", 7)]
        )


def test_run_pause_wait_uses_default_namespace() -> None:
    api = FakeAPI()
    args = parse("pause", "r", "--wait", "--timeout", "5")
    rc = plugin.run(args, api, Console(file=open("/dev/null", "w")))  # noqa: SIM115
    assert (
        rc == plugin.EXIT_OK
        and api.patches == [("ml", "r", {"spec": {"paused": True}})]
        and api.gets >= 2
    )


class RolledBackAPI(FakeAPI):
    """A pool whose operator rolls the patched weights back on the second read."""

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        self.gets += 1
        if self.gets < 2:
            return pool(7, conditions=[cond("WeightsSynced", "False", "Syncing", 7)])
        return pool(
            7,
            conditions=[cond("WeightsSynced", "False", "RolledBack", 7)],
            rollback={"failedVersion": "v2", "restoredVersion": "v1"},
        )


def test_sync_wait_fails_fast_when_the_pool_rolls_the_weights_back() -> None:
    api = RolledBackAPI()
    args = parse("sync-weights", "r", "--version", "v2", "--path", "/c/v2", "--wait")
    rc = plugin.run(args, api, Console(file=open("/dev/null", "w")))  # noqa: SIM115
    assert rc == plugin.EXIT_FAILED and api.gets == 2
    # An older rollback (another version) is not this sync's failure.
    other = pool(
        7,
        conditions=[cond("WeightsSynced", "False", "RolledBack", 7)],
        rollback={"failedVersion": "v1"},
    )
    assert plugin.failure("sync-weights", other, 7, "v2") is None
