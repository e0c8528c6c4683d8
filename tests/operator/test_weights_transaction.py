"""A weights change as a transaction (issue 8): Fence and Rollback, per-replica pause figures.

Reconciler.converge over the fake KubeAPI (pod labels included) and fake engines (real HTTP).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from rlfleet_operator import conditions as c
from rlfleet_operator import reconcile
from rlfleet_operator.reconcile import Reconciler

from .fakes import BASE_PATH, FakeKube, Fleet, fake_digest
from .test_reconcile import FAST, cond, set_spec, setup

V1 = {"version": "v1", "path": "/ckpt/v1"}
V2 = {"version": "v2", "path": "/ckpt/v2"}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture
def no_cooldown(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed load may be retried on the very next pass."""
    monkeypatch.setattr(reconcile, "SYNC_COOLDOWN_S", (0.0, 0.0))


def row(status: dict[str, Any], pod: str) -> dict[str, Any]:
    return next(r for r in status["replicaStatuses"] if r["pod"] == pod)


def reasons(events: list[tuple[str, str, str]]) -> list[str]:
    return [r for _, r, _ in events]


def annotation(kube: FakeKube, pod: str) -> str | None:
    meta = next(p["metadata"] for p in kube.pods if p["metadata"]["name"] == pod)
    return (meta.get("annotations") or {}).get("rlfleet.io/fenced")


def restarted(kube: FakeKube) -> Reconciler:
    """A new operator process: nothing remembered but what the API holds."""
    return Reconciler(kube, policy=FAST)


# -- Fence -----------------------------------------------------------------------------------------


def test_replica_failing_the_sync_is_fenced_and_not_resumed() -> None:
    async def go() -> None:
        async with Fleet(3) as fleet:
            kube, rec, events = setup(fleet)
            await rec.converge("ml", "pool")
            assert set(kube.serving().values()) == {"true"}

            set_spec(kube, paused=True, weights=V2)
            fleet.engines[0].bad_paths.add("/ckpt/v2")
            status = await rec.converge("ml", "pool")
            # Out of the client Service (label), with the reason on the pod and in status.
            assert kube.serving() == {"pool-0": "false", "pool-1": "true", "pool-2": "true"}
            assert "shape mismatch" in (annotation(kube, "pool-0") or "")
            assert row(status, "pool-0")["fenced"] is True
            assert "shape mismatch" in row(status, "pool-0")["fencedReason"]
            assert "fenced" not in row(status, "pool-1")
            assert status["fencedReplicas"] == 1 and status["phase"] == c.DEGRADED
            # The serving replicas agree: the transaction holds for what serves.
            synced = cond(status, c.WEIGHTS_SYNCED)
            assert (synced["status"], synced["reason"]) == ("True", "ReplicasFenced")
            assert "pool-0" in synced["message"]
            assert status["weightsVersion"] == "v2"
            assert status["weightsDigest"] == fake_digest("/ckpt/v2")
            assert "ReplicaFenced" in reasons(events)

            set_spec(kube, paused=False)
            status = await rec.converge("ml", "pool")
            assert fleet.states() == {"pool-0": "paused", "pool-1": "running", "pool-2": "running"}
            assert ("pool-0", "resume") not in fleet.log.ops("resume")
            paused = cond(status, c.PAUSED)
            assert (paused["status"], paused["reason"]) == ("False", "Running")
            assert "pool-0" in paused["message"] and "fenced" in paused["message"]
            assert kube.serving()["pool-0"] == "false"

    run(go())


def test_fenced_replica_comes_back_after_a_successful_retry(no_cooldown: None) -> None:
    async def go() -> None:
        async with Fleet(3) as fleet:
            kube, rec, events = setup(fleet, paused=True, weights=V2)
            fleet.engines[0].bad_paths.add("/ckpt/v2")
            await rec.converge("ml", "pool")
            set_spec(kube, paused=False)
            await rec.converge("ml", "pool")
            assert kube.serving()["pool-0"] == "false"

            fleet.engines[0].bad_paths.clear()  # e.g. the checkpoint reached that node
            status = await rec.converge("ml", "pool")
            assert [e.weights_version for e in fleet.engines] == ["v2"] * 3
            assert set(fleet.states().values()) == {"running"}
            ops = [x for x in fleet.log.ops() if x[0] == "pool-0"]
            assert ops.index(("pool-0", "update_weights")) < ops.index(("pool-0", "resume"))
            assert set(kube.serving().values()) == {"true"}
            assert annotation(kube, "pool-0") is None
            assert status["fencedReplicas"] == 0 and status["phase"] == c.RUNNING
            assert cond(status, c.WEIGHTS_SYNCED)["reason"] == "AllReplicasSynced"
            assert "ReplicaUnfenced" in reasons(events)

    run(go())


def test_resume_never_resumes_a_replica_whose_catch_up_sync_failed() -> None:
    """The gap: a replica restarted mid-sync on old weights, whose catch-up load fails."""

    async def go() -> None:
        async with Fleet(2, paused=True, weights_version="v5") as fleet:
            kube, rec, _ = setup(fleet, paused=False)
            kube.configmaps["pool-state"] = {
                "paused": "true",
                "weightsPath": "/ckpt/v5",
                "weightsVersion": "v5",
            }
            fleet.engines[1].weights_version = "v4"
            fleet.engines[1].bad_paths.add("/ckpt/v5")
            status = await rec.converge("ml", "pool")
            assert fleet.states() == {"pool-0": "running", "pool-1": "paused"}
            assert [e for e, _ in fleet.log.ops("resume")] == ["pool-0"]
            assert kube.serving() == {"pool-0": "true", "pool-1": "false"}
            assert row(status, "pool-1")["fenced"] is True

    run(go())


def test_operator_restart_keeps_a_fenced_replica_fenced_then_unfences_it() -> None:
    async def go() -> None:
        async with Fleet(2) as fleet:
            kube, rec, _ = setup(fleet, paused=True, weights=V2)
            fleet.engines[1].bad_paths.add("/ckpt/v2")
            await rec.converge("ml", "pool")
            assert kube.serving()["pool-1"] == "false"

            # A new operator has no cool-down memory: it retries at once, and the label stays.
            patches = len(kube.pod_patches)
            status = await restarted(kube).converge("ml", "pool")
            assert kube.serving()["pool-1"] == "false" and len(kube.pod_patches) == patches
            assert row(status, "pool-1")["fenced"] is True
            assert cond(status, c.WEIGHTS_SYNCED)["reason"] == "ReplicasFenced"

            fleet.engines[1].bad_paths.clear()
            status = await restarted(kube).converge("ml", "pool")
            assert kube.serving()["pool-1"] == "true" and status["fencedReplicas"] == 0

    run(go())


# -- Rollback --------------------------------------------------------------------------------------


async def committed_v1(fleet: Fleet, **spec: Any) -> tuple[FakeKube, Reconciler, list]:
    """A paused pool whose replicas all loaded (committed) v1."""
    kube, rec, events = setup(fleet, paused=True, weights=V1, **spec)
    status = await rec.converge("ml", "pool")
    assert status["committedWeights"] == {**V1, "digest": fake_digest("/ckpt/v1")}
    return kube, rec, events


def test_rollback_restores_the_committed_weights_everywhere() -> None:
    async def go() -> None:
        async with Fleet(3) as fleet:
            kube, rec, events = await committed_v1(fleet)
            set_spec(kube, weights={**V2, "failurePolicy": "Rollback"})
            fleet.engines[2].bad_paths.add("/ckpt/v2")
            status = await rec.converge("ml", "pool")
            # pool-0 and pool-1 had loaded v2: they went back to v1 (digest-checked).
            assert [e.weights_version for e in fleet.engines] == ["v1"] * 3
            assert [e.weights_path for e in fleet.engines] == ["/ckpt/v1"] * 3
            reload = [b for _, e, op, b in fleet.log.calls if op == "update_weights"][-2:]
            assert all(b["digest"] == fake_digest("/ckpt/v1") for b in reload)
            synced = cond(status, c.WEIGHTS_SYNCED)
            assert (synced["status"], synced["reason"]) == ("False", "RolledBack")
            assert "shape mismatch" in synced["message"] and "'v1'" in synced["message"]
            rb = status["rollback"]
            assert (rb["failedVersion"], rb["restoredVersion"]) == ("v2", "v1")
            assert "pool-2" in rb["reason"] and rb["at"]
            assert kube.configmaps["pool-state"]["weightsVersion"] == "v1"  # restarts load v1
            assert status["committedWeights"]["version"] == "v1"
            assert status["weightsVersion"] == "v1" and status["fencedReplicas"] == 0
            assert set(kube.serving().values()) == {"true"}
            assert "RollingBack" in reasons(events)

            # spec.weights still names v2: never retried, even with no cool-down left.
            rec._sync_failed.clear()
            calls = len(fleet.log.ops("update_weights"))
            status = await rec.converge("ml", "pool")
            assert len(fleet.log.ops("update_weights")) == calls
            assert cond(status, c.WEIGHTS_SYNCED)["reason"] == "RolledBack"

            set_spec(kube, paused=False)
            status = await rec.converge("ml", "pool")
            assert set(fleet.states().values()) == {"running"}
            assert {e.weights_version for e in fleet.engines} == {"v1"}

            # A new spec.weights is a new transaction.
            fleet.engines[2].bad_paths.clear()
            set_spec(kube, paused=True, weights={"version": "v3", "path": "/ckpt/v3"})
            set_spec(kube, weights={**kube.pool["spec"]["weights"], "failurePolicy": "Rollback"})
            status = await rec.converge("ml", "pool")
            assert {e.weights_version for e in fleet.engines} == {"v3"}
            assert cond(status, c.WEIGHTS_SYNCED)["reason"] == "AllReplicasSynced"
            assert status["committedWeights"]["version"] == "v3"
            assert "rollback" not in kube.pool["status"]  # history once a later change commits

    run(go())


def test_rollback_to_the_models_start_weights() -> None:
    """No spec.weights before: the pool goes back to what the engines started with."""

    async def go() -> None:
        async with Fleet(2) as fleet:
            kube, rec, _ = setup(fleet)
            status = await rec.converge("ml", "pool")
            base = {"version": "base", "path": BASE_PATH, "digest": fake_digest(BASE_PATH)}
            assert status["committedWeights"] == base

            set_spec(kube, paused=True, weights={**V2, "failurePolicy": "Rollback"})
            fleet.engines[0].bad_paths.add("/ckpt/v2")
            status = await rec.converge("ml", "pool")
            assert [(e.weights_version, e.weights_path) for e in fleet.engines] == [
                ("base", BASE_PATH)
            ] * 2
            assert status["rollback"]["restored"] == base
            assert kube.configmaps["pool-state"]["weightsPath"] == BASE_PATH

    run(go())


def test_rollback_picked_up_after_an_operator_restart() -> None:
    """The operator died after recording the rollback, before reloading every replica."""

    async def go() -> None:
        async with Fleet(3) as fleet:
            kube, _rec, _ = await committed_v1(fleet)
            set_spec(kube, weights={**V2, "failurePolicy": "Rollback"})
            fleet.engines[1].weights_version, fleet.engines[1].weights_path = "v2", "/ckpt/v2"
            v1 = {**V1, "digest": fake_digest("/ckpt/v1")}
            kube.pool["status"]["rollback"] = {
                "failed": V2,
                "failedVersion": "v2",
                "restored": v1,
                "restoredVersion": "v1",
                "reason": "pool-2 (update_weights: shape mismatch)",
                "at": "2026-01-01T00:00:00Z",
            }
            before = len(fleet.log.ops("update_weights"))
            status = await restarted(kube).converge("ml", "pool")
            assert [e.weights_version for e in fleet.engines] == ["v1"] * 3
            calls = [b for _, _, op, b in fleet.log.calls if op == "update_weights"][before:]
            assert [b["version"] for b in calls] == ["v1"]  # only pool-1, and never v2
            assert cond(status, c.WEIGHTS_SYNCED)["reason"] == "RolledBack"
            assert status["rollback"]["at"] == "2026-01-01T00:00:00Z"
            assert kube.configmaps["pool-state"]["weightsVersion"] == "v1"

    run(go())


def test_fence_policy_retries_the_same_weights_rollback_does_not(no_cooldown: None) -> None:
    async def go() -> None:
        async with Fleet(2) as fleet:
            kube, rec, _ = await committed_v1(fleet)
            set_spec(kube, weights={**V2, "failurePolicy": "Fence"})
            fleet.engines[0].bad_paths.add("/ckpt/v2")
            await rec.converge("ml", "pool")
            calls = len(fleet.log.ops("update_weights"))
            status = await rec.converge("ml", "pool")
            assert len(fleet.log.ops("update_weights")) == calls + 1  # pool-0 retried
            assert "rollback" not in status and fleet.engines[1].weights_version == "v2"

    run(go())


def test_rollback_with_nothing_committed_fences_instead() -> None:
    """Engines that do not say where their start weights came from: nothing to go back to."""

    async def go() -> None:
        async with Fleet(2) as fleet:
            for e in fleet.engines:
                e.weights_path = ""
            kube, rec, events = setup(fleet)
            status = await rec.converge("ml", "pool")
            assert "committedWeights" not in status

            set_spec(kube, paused=True, weights={**V2, "failurePolicy": "Rollback"})
            fleet.engines[0].bad_paths.add("/ckpt/v2")
            status = await rec.converge("ml", "pool")
            assert "RollbackImpossible" in reasons(events) and "rollback" not in status
            assert kube.serving() == {"pool-0": "false", "pool-1": "true"}
            assert cond(status, c.WEIGHTS_SYNCED)["reason"] == "ReplicasFenced"

    run(go())


# -- per-replica pause figures -------------------------------------------------------------------


def test_replica_statuses_show_mode_and_retracted_kept_counts() -> None:
    async def go() -> None:
        async with Fleet(2) as fleet:
            kube, rec, _ = setup(fleet, paused=True, pause={"mode": "retract"})
            fleet.engines[1].inflight = 5
            status = await rec.converge("ml", "pool")
            assert [
                (r["pauseMode"], r["retractedRequests"], r["keptRequests"])
                for r in status["replicaStatuses"]
            ] == [("retract", 2, 0), ("retract", 5, 0)]
            # Level-triggered: a later pass reads the same figures from the engines.
            status = await restarted(kube).converge("ml", "pool")
            assert row(status, "pool-1")["retractedRequests"] == 5

            set_spec(kube, paused=False)
            status = await rec.converge("ml", "pool")
            assert "retractedRequests" not in row(status, "pool-1")

    run(go())
