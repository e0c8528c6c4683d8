"""The pool state machine: Reconciler.converge over a fake KubeAPI and fake engines (real HTTP)."""

from __future__ import annotations

import asyncio
from typing import Any

from rlfleet_operator import conditions as c
from rlfleet_operator import fanout
from rlfleet_operator.reconcile import Reconciler

from .fakes import FakeKube, Fleet, pod, pool_body

FAST = fanout.FanoutPolicy(attempts=2, backoff_s=0.01, call_timeout_s=0.5, weights_timeout_s=2.0)


def run(coro):
    return asyncio.run(coro)


def setup(fleet: Fleet, **spec: Any) -> tuple[FakeKube, Reconciler, list[tuple[str, str, str]]]:
    kube = FakeKube(
        pool_body(replicas=len(fleet.engines), port=fleet.port, **spec),
        [pod(e.name, e.host) for e in fleet.engines],
    )
    events: list[tuple[str, str, str]] = []
    rec = Reconciler(kube, events=lambda body, t, r, m: events.append((t, r, m)), policy=FAST)
    return kube, rec, events


def cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    found = c.get_condition(status["conditions"], type_)
    assert found is not None
    return dict(found)


def set_spec(kube: FakeKube, **spec: Any) -> None:
    kube.pool["spec"].update(spec)
    kube.pool["metadata"]["generation"] += 1


def test_running_pool_reports_ready_and_running() -> None:
    async def go() -> None:
        async with Fleet(3) as fleet:
            kube, rec, _ = setup(fleet)
            status = await rec.converge("ml", "pool")
            assert status["phase"] == c.RUNNING
            assert (status["replicas"], status["readyReplicas"], status["pausedReplicas"]) == (
                3,
                3,
                0,
            )
            assert cond(status, c.READY)["status"] == "True"
            assert cond(status, c.PAUSED) | {"lastTransitionTime": None} == {
                "type": "Paused",
                "status": "False",
                "reason": "Running",
                "message": "admission open on 3 replicas",
                "observedGeneration": 1,
                "lastTransitionTime": None,
            }
            assert (
                status["selector"] == "app.kubernetes.io/name=rlfleet-engine,rlfleet.io/pool=pool"
            )
            assert kube.configmaps["pool-state"] == {
                "paused": "false",
                "weightsPath": "",
                "weightsVersion": "",
                "weightsDigest": "",
            }
            # Nothing changed: a second pass writes nothing.
            writes = len(kube.status_writes)
            await rec.converge("ml", "pool")
            assert len(kube.status_writes) == writes

    run(go())


def test_pause_sync_resume_cycle() -> None:
    async def go() -> None:
        async with Fleet(3) as fleet:
            kube, rec, events = setup(fleet)
            await rec.converge("ml", "pool")

            set_spec(kube, paused=True)
            status = await rec.converge("ml", "pool")
            assert set(fleet.states().values()) == {"paused"}
            assert status["phase"] == c.PAUSED_PHASE and status["pausedReplicas"] == 3
            paused = cond(status, c.PAUSED)
            assert (paused["status"], paused["reason"], paused["observedGeneration"]) == (
                "True",
                "AllReplicasPaused",
                2,
            )
            last = status["lastPause"]
            assert (
                last["abortedRequests"] == 6 and last["partialTokens"] == 60 and last["completedAt"]
            )
            assert kube.configmaps["pool-state"]["paused"] == "true"
            # Pausing was written before the fan-out, then Paused.
            phases = [w["phase"] for w in kube.status_writes]
            assert phases[-2:] == [c.PAUSING, c.PAUSED_PHASE]
            assert [r for _, r, _ in events][-2:] == ["Pausing", "Paused"]

            set_spec(kube, weights={"version": "step-1", "path": "/ckpt/step-1"})
            status = await rec.converge("ml", "pool")
            assert {e.weights_version for e in fleet.engines} == {"step-1"}
            assert (
                cond(status, c.WEIGHTS_SYNCED)["status"] == "True"
                and status["weightsVersion"] == "step-1"
            )
            assert kube.configmaps["pool-state"] == {
                "paused": "true",
                "weightsPath": "/ckpt/step-1",
                "weightsVersion": "step-1",
                "weightsDigest": "",
            }
            assert status["lastWeightsSync"]["failedReplicas"] == 0
            assert c.SYNCING_WEIGHTS in [w["phase"] for w in kube.status_writes]

            set_spec(kube, paused=False)
            status = await rec.converge("ml", "pool")
            assert set(fleet.states().values()) == {"running"}
            assert status["phase"] == c.RUNNING and cond(status, c.PAUSED)["reason"] == "Running"
            assert kube.configmaps["pool-state"]["paused"] == "false"
            assert [r for _, r, _ in events][-2:] == ["Resuming", "Resumed"]

    run(go())


def test_state_configmap_is_written_before_the_fanout() -> None:
    async def go() -> None:
        async with Fleet(2) as fleet:
            kube, rec, _ = setup(fleet)
            await rec.converge("ml", "pool")
            set_spec(kube, paused=True)
            await rec.converge("ml", "pool")
            cm_time = next(t for t, data in kube.configmap_writes if data.get("paused") == "true")
            first_reject = min(t for t, _, op, _ in fleet.log.calls if op == "reject")
            assert cm_time < first_reject

    run(go())


def test_failing_replica_degrades_then_recovers() -> None:
    async def go() -> None:
        async with Fleet(3) as fleet:
            _kube, rec, events = setup(fleet, paused=True)
            fleet.engines[1].fail["pause"] = 10
            status = await rec.converge("ml", "pool")
            assert status["phase"] == c.DEGRADED
            paused = cond(status, c.PAUSED)
            assert (
                paused["status"] == "False"
                and paused["reason"] == "PauseIncomplete"
                and "pool-1" in paused["message"]
            )
            row = next(r for r in status["replicaStatuses"] if r["pod"] == "pool-1")
            assert "injected failure" in row["message"]
            assert fleet.states() == {"pool-0": "paused", "pool-1": "rejecting", "pool-2": "paused"}
            assert any(
                t == "Warning" and r == "PauseFailed" and "pool-1" in m for t, r, m in events
            )
            assert status["lastPause"]["failedReplicas"] == 1

            fleet.engines[1].fail.clear()
            status = await rec.converge("ml", "pool")  # level-triggered: the next pass fixes it
            assert status["phase"] == c.PAUSED_PHASE and cond(status, c.PAUSED)["status"] == "True"
            assert set(fleet.states().values()) == {"paused"}

    run(go())


def test_pickup_after_operator_restart_mid_pause() -> None:
    async def go() -> None:
        async with Fleet(3) as fleet:
            kube, _rec, events = setup(fleet, paused=True)
            # The previous operator died after rejecting everywhere and pausing one replica.
            fleet.engines[0].state = "paused"
            fleet.engines[1].state = "rejecting"
            fleet.engines[2].state = "rejecting"
            kube.pool["status"] = {
                "phase": "Pausing",
                "lastPause": {"startedAt": "2026-01-01T00:00:00Z", "generation": 1},
            }
            status = await Reconciler(
                kube, events=lambda *a: events.append(a[1:]), policy=FAST
            ).converge("ml", "pool")
            assert set(fleet.states().values()) == {"paused"}
            assert status["phase"] == c.PAUSED_PHASE
            assert status["lastPause"]["startedAt"] == "2026-01-01T00:00:00Z"
            assert status["lastPause"]["resumedAfterRestart"] is True
            # Only the two unpaused replicas were touched.
            assert sorted(e for e, _ in fleet.log.ops("pause")) == ["pool-1", "pool-2"]

    run(go())


def test_straggler_is_paused_without_overwriting_last_pause() -> None:
    async def go() -> None:
        async with Fleet(3) as fleet:
            _kube, rec, events = setup(fleet, paused=True)
            status = await rec.converge("ml", "pool")
            first = status["lastPause"]
            fleet.engines[2].state = "running"  # e.g. restarted by hand without the state env
            status = await rec.converge("ml", "pool")
            assert fleet.engines[2].state == "paused"
            assert status["lastPause"] == first
            assert events[-1][1] == "ReplicasPaused"

    run(go())


def test_starting_pod_does_not_block_paused_and_is_listed() -> None:
    async def go() -> None:
        async with Fleet(2) as fleet:
            kube, rec, _ = setup(fleet, paused=True)
            kube.pool["spec"]["replicas"] = 4
            kube.pods.append(pod("pool-9", "127.0.0.99", ready=False))  # process not up yet
            kube.pods.append(pod("pool-8", None, phase="Pending", waiting="ImagePullBackOff"))
            status = await rec.converge("ml", "pool")
            assert cond(status, c.PAUSED)["status"] == "True"
            assert "will start paused" in cond(status, c.PAUSED)["message"]
            rows = {r["pod"]: r for r in status["replicaStatuses"]}
            assert rows["pool-9"]["state"] == "Starting"
            assert (
                rows["pool-8"]["state"] == "Pending"
                and "ImagePullBackOff" in rows["pool-8"]["message"]
            )
            assert status["phase"] == c.DEGRADED  # a pod that cannot start says why
            assert "ImagePullBackOff" in cond(status, c.READY)["message"]

    run(go())


def test_bad_checkpoint_everywhere_reports_sync_failed() -> None:
    async def go() -> None:
        async with Fleet(3, paused=True) as fleet:
            _kube, rec, events = setup(
                fleet, paused=True, weights={"version": "v2", "path": "/bad"}
            )
            for e in fleet.engines:
                e.bad_paths.add("/bad")
            status = await rec.converge("ml", "pool")
            synced = cond(status, c.WEIGHTS_SYNCED)
            assert (synced["status"], synced["reason"]) == ("False", "SyncFailed")
            assert all(f"pool-{i}" in synced["message"] for i in range(3))
            assert [e.weights_version for e in fleet.engines] == ["base"] * 3
            assert status["phase"] == c.DEGRADED
            assert any(r == "WeightsSyncFailed" for _, r, _ in events)
            # A failed load is not retried on every pass (cool-down), but stays reported.
            calls = len(fleet.log.ops("update_weights"))
            status = await rec.converge("ml", "pool")
            assert len(fleet.log.ops("update_weights")) == calls
            assert cond(status, c.WEIGHTS_SYNCED)["reason"] == "SyncFailed"

    run(go())


def test_weights_change_while_running_waits_for_pause() -> None:
    async def go() -> None:
        async with Fleet(2) as fleet:
            kube, rec, _ = setup(fleet)
            await rec.converge("ml", "pool")
            set_spec(kube, weights={"version": "v3", "path": "/ckpt/v3"})
            status = await rec.converge("ml", "pool")
            assert fleet.log.ops("update_weights") == []
            assert cond(status, c.WEIGHTS_SYNCED)["reason"] == "PauseRequired"
            # New pods keep starting on the fleet's current weights, not the unsynced ones.
            assert kube.configmaps["pool-state"]["weightsVersion"] == ""

    run(go())


def test_resume_loads_pool_weights_into_a_stale_paused_replica_first() -> None:
    async def go() -> None:
        async with Fleet(2, paused=True, weights_version="v5") as fleet:
            kube, rec, _ = setup(fleet, paused=False)
            kube.configmaps["pool-state"] = {
                "paused": "true",
                "weightsPath": "/ckpt/v5",
                "weightsVersion": "v5",
            }
            fleet.engines[1].weights_version = "v4"  # restarted mid-sync on older weights
            status = await rec.converge("ml", "pool")
            assert [e.weights_version for e in fleet.engines] == ["v5", "v5"]
            assert set(fleet.states().values()) == {"running"}
            assert status["phase"] == c.RUNNING
            ops = [(e, op) for e, op in fleet.log.ops() if op in ("update_weights", "resume")]
            assert ops.index(("pool-1", "update_weights")) < ops.index(("pool-1", "resume"))

    run(go())


def test_missing_control_token_is_reported() -> None:
    async def go() -> None:
        async with Fleet(1) as fleet:
            _kube, rec, _ = setup(fleet, controlTokenSecret="user-token")
            status = await rec.converge("ml", "pool")
            assert status["phase"] == c.DEGRADED
            assert cond(status, c.READY)["reason"] == "ControlTokenMissing"

    run(go())


def test_operator_creates_a_token_secret_when_none_is_named() -> None:
    async def go() -> None:
        async with Fleet(1) as fleet:
            kube, rec, _ = setup(fleet)
            kube.secrets.clear()
            status = await rec.converge("ml", "pool")
            assert "pool-control-token" in kube.secrets
            # The fake engine expects the old token: every replica answers 401 and is reported.
            assert status["phase"] == c.DEGRADED

    run(go())


def test_ensure_children_applies_manifests_and_creates_state() -> None:
    async def go() -> None:
        async with Fleet(1) as fleet:
            kube, rec, _ = setup(fleet, paused=True, weights={"version": "v1", "path": "/w"})
            await rec.ensure_children(kube.pool)
            await rec.ensure_children(kube.pool)  # idempotent
            assert [m["kind"] for m in kube.applied] == ["Service", "Service", "StatefulSet"] * 2
            assert kube.configmaps["pool-state"] == {
                "paused": "true",
                "weightsPath": "/w",
                "weightsVersion": "v1",
                "weightsDigest": "",
            }

    run(go())


def test_deleted_pool_is_a_no_op() -> None:
    async def go() -> None:
        async with Fleet(1) as fleet:
            kube, rec, _ = setup(fleet)
            kube.pool["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
            assert await rec.converge("ml", "pool") is None
            assert kube.status_writes == []

    run(go())


def test_concurrent_passes_are_serialised() -> None:
    async def go() -> None:
        async with Fleet(3) as fleet:
            _kube, rec, _ = setup(fleet, paused=True)
            for e in fleet.engines:
                e.delay["pause"] = 0.1
            await asyncio.gather(*(rec.converge("ml", "pool") for _ in range(3)))
            # One pass paused everything; the others found nothing to do.
            assert len(fleet.log.ops("pause")) == 3

    run(go())


# -- found running against a real apiserver (tests/e2e/test_pool.py) ------------------------------


def _walk(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _walk(v)]
    if isinstance(value, list):
        return [x for v in value for x in _walk(v)]
    return [value]


def test_paused_stays_true_until_every_replica_serves_again() -> None:
    """`kubectl wait --for=condition=Paused=false` must mean resumed, not "resume requested"."""

    async def go() -> None:
        async with Fleet(2, paused=True) as fleet:
            kube, rec, _ = setup(fleet, paused=False)
            fleet.engines[1].fail["resume"] = 10
            status = await rec.converge("ml", "pool")
            paused = cond(status, c.PAUSED)
            assert (paused["status"], paused["reason"]) == ("True", "ResumeIncomplete")
            assert "pool-1" in paused["message"] and status["phase"] == c.DEGRADED
            # The in-progress write (phase Resuming) did not say Paused=False either.
            resuming = next(w for w in kube.status_writes if w["phase"] == c.RESUMING)
            assert cond(resuming, c.PAUSED)["status"] == "True"

            fleet.engines[1].fail.clear()
            status = await rec.converge("ml", "pool")
            paused = cond(status, c.PAUSED)
            assert (paused["status"], paused["reason"]) == ("False", "Running")
            assert status["phase"] == c.RUNNING

    run(go())


def test_pickup_after_restart_when_the_replicas_finished_pausing_alone() -> None:
    async def go() -> None:
        async with Fleet(2, paused=True) as fleet:
            kube, rec, events = setup(fleet, paused=True)
            kube.pool["status"] = {
                "phase": "Pausing",
                "lastPause": {"startedAt": "2026-01-01T00:00:00Z", "generation": 1},
            }
            status = await rec.converge("ml", "pool")
            last = status["lastPause"]
            assert last["completedAt"] and last["resumedAfterRestart"] is True
            assert (last["replicas"], last["pausedReplicas"]) == (2, 2)
            assert status["phase"] == c.PAUSED_PHASE
            assert fleet.log.ops("pause") == [] and fleet.log.ops("reject") == []
            assert any(r == "Paused" for _, r, _ in events)

    run(go())


def test_engine_answering_while_still_starting_is_left_alone() -> None:
    """Its API server is up before its engine process: state "starting", neither running nor
    paused. It comes up as the state ConfigMap says; pausing it now would only wait on it."""

    async def go() -> None:
        async with Fleet(2) as fleet:
            _kube, rec, _ = setup(fleet, paused=True)
            fleet.engines[1].state = "starting"
            fleet.engines[1].weights_version = ""
            status = await rec.converge("ml", "pool")
            assert [e for e, _ in fleet.log.ops("reject")] == ["pool-0"]
            rows = {r["pod"]: r for r in status["replicaStatuses"]}
            assert rows["pool-1"]["state"] == "Starting"
            assert "weightsVersion" not in rows["pool-1"]
            paused = cond(status, c.PAUSED)
            assert paused["status"] == "True" and "will start paused" in paused["message"]
            assert "" not in _walk(status)

    run(go())


def test_replica_that_was_up_and_stops_answering_is_unreachable() -> None:
    """Hung (or dying) after its startup probe passed: reported, never "Starting"."""

    async def go() -> None:
        async with Fleet(2) as fleet:
            kube, rec, events = setup(fleet, paused=True)
            hung = pod("pool-7", "127.0.0.250", ready=False)  # nothing listens there
            hung["status"]["containerStatuses"] = [
                {"name": "engine", "started": True, "ready": False, "state": {"running": {}}}
            ]
            kube.pods.append(hung)
            kube.pool["spec"]["replicas"] = 3
            status = await rec.converge("ml", "pool")
            rows = {r["pod"]: r for r in status["replicaStatuses"]}
            assert rows["pool-7"]["state"] == "Unreachable"
            assert status["phase"] == c.DEGRADED
            paused = cond(status, c.PAUSED)
            assert paused["status"] == "False" and "pool-7" in paused["message"]
            assert set(fleet.states().values()) == {"paused"}  # the others are not held up
            assert any(r == "ReplicaUnreachable" and "pool-7" in m for _, r, m in events)

    run(go())


def test_status_never_carries_empty_strings() -> None:
    """kube-apiserver 1.20 refuses "" in the CRD's typed string fields (read as null)."""

    async def go() -> None:
        async with Fleet(2, weights_version="") as fleet:
            kube, rec, _ = setup(fleet)
            status = await rec.converge("ml", "pool")
            for write in kube.status_writes:
                assert "" not in _walk(write)
            assert "weightsVersion" not in status

    run(go())
