"""The pause / resume / sync sequences over fake engines speaking real HTTP."""

from __future__ import annotations

import asyncio
import time

from rlfleet_operator import fanout
from rlfleet_operator.replica import Replica, ReplicaClient

from .fakes import TOKEN, Fleet

FAST = fanout.FanoutPolicy(
    attempts=3, backoff_s=0.02, call_timeout_s=1.0, drain_timeout_s=1.0, weights_timeout_s=2.0
)


def run(coro):
    return asyncio.run(coro)


def test_reject_reaches_every_replica_before_any_full_pause() -> None:
    async def go() -> None:
        async with Fleet(5) as fleet, ReplicaClient(TOKEN) as client:
            fleet.engines[0].delay["reject"] = (
                0.2  # the slowest reject still precedes every full pause
            )
            outcome = await fanout.pause(client, fleet.replicas(), FAST, pool="ml/pool")
            ops = [op for _, op in fleet.log.ops() if op in ("reject", "pause")]
            assert ops == ["reject"] * 5 + ["pause"] * 5
            assert outcome.ok and set(fleet.states().values()) == {"paused"}

    run(go())


def test_pause_aggregates_figures() -> None:
    async def go() -> None:
        async with Fleet(3, inflight=4) as fleet, ReplicaClient(TOKEN) as client:
            fleet.engines[2].state = "paused"  # already paused: counted, adds nothing
            outcome = await fanout.pause(client, fleet.replicas(), FAST)
            fig = outcome.figures
            assert (fig.replicas, fig.paused, fig.failed, fig.already_paused) == (3, 3, 0, 1)
            assert (fig.aborted, fig.partial_tokens, fig.freed_blocks) == (8, 80, 24)
            status = fig.to_status()
            assert (
                status["abortedRequests"] == 8
                and status["partialTokens"] == 80
                and status["durationSeconds"] >= 0
            )

    run(go())


def test_failing_replica_is_retried_then_succeeds() -> None:
    async def go() -> None:
        async with Fleet(3) as fleet, ReplicaClient(TOKEN) as client:
            fleet.engines[1].fail["pause"] = 2
            outcome = await fanout.pause(client, fleet.replicas(), FAST)
            assert outcome.ok
            assert outcome.pause.by_pod()["pool-1"].attempts == 3
            assert outcome.pause.by_pod()["pool-0"].attempts == 1

    run(go())


def test_dead_replica_is_reported_without_blocking_the_others() -> None:
    async def go() -> None:
        async with Fleet(4) as fleet, ReplicaClient(TOKEN) as client:
            await fleet.engines[3].stop()
            outcome = await fanout.pause(client, fleet.replicas(), FAST)
            assert not outcome.ok
            assert set(outcome.failures) == {"pool-3"}
            assert outcome.pause.by_pod()["pool-3"].attempts == FAST.attempts
            assert [fleet.states()[f"pool-{i}"] for i in range(3)] == ["paused"] * 3
            assert outcome.figures.failed == 1 and outcome.figures.paused == 3

    run(go())


def test_rerun_is_idempotent() -> None:
    async def go() -> None:
        async with Fleet(3) as fleet, ReplicaClient(TOKEN) as client:
            first = await fanout.pause(client, fleet.replicas(), FAST)
            second = await fanout.pause(client, fleet.replicas(), FAST)
            assert first.ok and second.ok
            assert first.figures.aborted == 6 and second.figures.aborted == 0
            assert second.figures.already_paused == 3
            for _ in range(2):
                assert (await fanout.resume(client, fleet.replicas(), FAST)).ok
            assert set(fleet.states().values()) == {"running"}

    run(go())


def test_bounded_parallelism() -> None:
    async def go() -> None:
        async with Fleet(8) as fleet, ReplicaClient(TOKEN) as client:
            for e in fleet.engines:
                e.delay["resume"] = 0.05
            policy = fanout.FanoutPolicy(max_parallel=3, call_timeout_s=2.0)
            result = await fanout.resume(client, fleet.replicas(), policy)
            assert result.ok
            assert fleet.log.max_in_flight == 3

    run(go())


def test_per_call_timeout_bounds_a_hung_replica() -> None:
    async def go() -> None:
        async with Fleet(3) as fleet, ReplicaClient(TOKEN) as client:
            fleet.engines[0].delay["resume"] = 1.0
            policy = fanout.FanoutPolicy(attempts=2, backoff_s=0.01, call_timeout_s=0.2)
            start = time.monotonic()
            result = await fanout.resume(client, fleet.replicas(), policy)
            assert time.monotonic() - start < 0.9
            failed = result.by_pod()["pool-0"]
            assert not failed.ok and "timed out" in (failed.error or "") and failed.attempts == 2
            assert result.by_pod()["pool-1"].ok and result.by_pod()["pool-2"].ok

    run(go())


def test_client_errors_are_not_retried_and_token_never_leaks() -> None:
    async def go() -> None:
        async with Fleet(2) as fleet, ReplicaClient("wrong-token") as client:
            result = await fanout.resume(client, fleet.replicas(), FAST)
            for r in result.results:
                assert not r.ok and r.attempts == 1 and "401" in (r.error or "")
                assert "wrong-token" not in (r.error or "")
            assert "wrong-token" not in repr(client)

    run(go())


def test_sync_weights_reports_bad_checkpoint_and_conflict() -> None:
    async def go() -> None:
        async with Fleet(3, paused=True) as fleet, ReplicaClient(TOKEN) as client:
            fleet.engines[1].bad_paths.add("/ckpt/step-1")
            fleet.engines[2].state = "running"  # 409: not paused
            result = await fanout.sync_weights(
                client, fleet.replicas(), "step-1", "/ckpt/step-1", FAST
            )
            by_pod = result.by_pod()
            assert by_pod["pool-0"].ok and fleet.engines[0].weights_version == "step-1"
            assert "400" in (by_pod["pool-1"].error or "") and by_pod["pool-1"].attempts == 1
            assert "409" in (by_pod["pool-2"].error or "")
            assert fleet.engines[1].weights_version == "base"

    run(go())


def test_probe_reads_state_and_version() -> None:
    async def go() -> None:
        async with Fleet(2) as fleet, ReplicaClient(TOKEN) as client:
            fleet.engines[1].state = "paused"
            fleet.engines[1].weights_version = "v7"
            result = await fanout.probe(
                client, [*fleet.replicas(), Replica("gone", "http://127.0.0.1:1")], FAST
            )
            by_pod = result.by_pod()
            assert by_pod["pool-0"].data["state"] == "running"
            data = by_pod["pool-1"].data
            assert (data["is_paused"], data["state"], data["weights_version"]) == (
                True,
                "paused",
                "v7",
            )
            assert not by_pod["gone"].ok

    run(go())


def test_backoff_grows_and_is_capped() -> None:
    policy = fanout.FanoutPolicy(backoff_s=0.5, backoff_max_s=3.0)
    assert [policy.backoff(i) for i in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
