"""Pool-wide control sequences over a list of replicas: plain async code, no Kubernetes.

pause  = stage "reject" on every replica (admission closed fleet-wide) → full pause on every replica
resume = resume on every replica
sync   = update_weights on every replica

Every step runs concurrently with bounded parallelism, retries each replica with
exponential backoff, and reports per replica without letting one failure block
the others. Every step is idempotent, so re-running a sequence converges.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import metrics
from .replica import ControlError, Replica, ReplicaClient

log = logging.getLogger("rlfleet_operator.fanout")

REJECT, PAUSE, RESUME, UPDATE_WEIGHTS, PROBE = (
    "reject",
    "pause",
    "resume",
    "update_weights",
    "probe",
)


@dataclass(frozen=True)
class FanoutPolicy:
    """Parallelism, retries and timeouts of a fan-out."""

    max_parallel: int = 32
    attempts: int = 3
    backoff_s: float = 0.5
    backoff_max_s: float = 5.0
    call_timeout_s: float = 5.0
    drain_timeout_s: float = 30.0
    weights_timeout_s: float = 600.0
    pause_extra: Mapping[str, Any] = field(default_factory=dict)

    def backoff(self, attempt: int) -> float:
        """Delay before retry number `attempt` (1-based)."""
        return min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1))


@dataclass
class ReplicaResult:
    pod: str
    step: str
    ok: bool
    data: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    attempts: int = 0
    duration_s: float = 0.0


@dataclass
class StepResult:
    step: str
    results: list[ReplicaResult]
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def failed(self) -> list[ReplicaResult]:
        return [r for r in self.results if not r.ok]

    def by_pod(self) -> dict[str, ReplicaResult]:
        return {r.pod: r for r in self.results}


@dataclass
class PauseFigures:
    """Pool-level figures of one pause (status.lastPause)."""

    replicas: int = 0
    paused: int = 0
    failed: int = 0
    already_paused: int = 0
    aborted: int = 0
    partial_tokens: int = 0
    freed_blocks: int = 0
    forced: int = 0
    max_replica_duration_s: float = 0.0
    duration_s: float = 0.0
    per_replica: list[dict[str, Any]] = field(default_factory=list)

    def to_status(self) -> dict[str, Any]:
        return {
            "replicas": self.replicas,
            "pausedReplicas": self.paused,
            "failedReplicas": self.failed,
            "abortedRequests": self.aborted,
            "partialTokens": self.partial_tokens,
            "freedBlocks": self.freed_blocks,
            "forcedReplicas": self.forced,
            "maxReplicaSeconds": round(self.max_replica_duration_s, 3),
            "durationSeconds": round(self.duration_s, 3),
            "perReplica": self.per_replica,
        }


@dataclass
class PauseOutcome:
    reject: StepResult
    pause: StepResult
    figures: PauseFigures

    @property
    def ok(self) -> bool:
        return self.pause.ok

    @property
    def failures(self) -> dict[str, str]:
        """pod → error, for replicas that did not end paused."""
        return {r.pod: r.error or "failed" for r in self.pause.failed}


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def aggregate_pause(results: Sequence[ReplicaResult], duration_s: float) -> PauseFigures:
    """Sum the replicas' pause answers into pool figures."""
    figures = PauseFigures(replicas=len(results), duration_s=duration_s)
    for r in results:
        if not r.ok:
            figures.failed += 1
            continue
        figures.paused += 1
        figures.already_paused += bool(r.data.get("already_paused"))
        figures.aborted += _int(r.data.get("aborted"))
        figures.partial_tokens += _int(r.data.get("partial_tokens"))
        figures.freed_blocks += _int(r.data.get("freed_blocks"))
        figures.forced += bool(r.data.get("forced"))
        try:
            replica_s = float(r.data.get("duration_s") or 0.0)
        except (TypeError, ValueError):
            replica_s = 0.0
        figures.max_replica_duration_s = max(figures.max_replica_duration_s, replica_s)
        figures.per_replica.append(
            {
                "pod": r.pod,
                "durationSeconds": round(replica_s, 4),
                "abortedRequests": _int(r.data.get("aborted")),
                "partialTokens": _int(r.data.get("partial_tokens")),
                "freedBlocks": _int(r.data.get("freed_blocks")),
                "totalBlocks": _int(r.data.get("total_blocks")),
                "forced": bool(r.data.get("forced")),
            }
        )
    figures.per_replica.sort(key=lambda x: x["pod"])
    return figures


async def _call_with_retries(
    step: str,
    replica: Replica,
    call: Callable[[Replica], Awaitable[dict[str, Any]]],
    policy: FanoutPolicy,
    pool: str,
) -> ReplicaResult:
    start = time.monotonic()
    attempt = 0
    error = "not attempted"
    while attempt < max(1, policy.attempts):
        attempt += 1
        try:
            data = await call(replica)
        except ControlError as exc:
            error = str(exc)
            retry = exc.retryable and attempt < policy.attempts
        except Exception as exc:  # a bug or an odd answer must not sink the other replicas
            error = f"{type(exc).__name__}: {exc}"
            retry = attempt < policy.attempts
        else:
            duration = time.monotonic() - start
            metrics.REPLICA_CALL_SECONDS.labels(step).observe(duration)
            return ReplicaResult(replica.pod, step, True, data, None, attempt, duration)
        if not retry:
            break
        delay = policy.backoff(attempt)
        metrics.REPLICA_RETRIES.labels(step).inc()
        log.log(
            logging.DEBUG if step == PROBE else logging.WARNING,
            "pool=%s pod=%s step=%s attempt=%d failed, retry in %.2fs: %s",
            pool,
            replica.pod,
            step,
            attempt,
            delay,
            error,
        )
        await asyncio.sleep(delay)
    duration = time.monotonic() - start
    metrics.REPLICA_CALL_SECONDS.labels(step).observe(duration)
    metrics.REPLICA_FAILURES.labels(step).inc()
    # A probe failure is reported in status (Starting / Unreachable); it is not an operator error.
    log.log(
        logging.INFO if step == PROBE else logging.ERROR,
        "pool=%s pod=%s step=%s failed after %d attempt(s): %s",
        pool,
        replica.pod,
        step,
        attempt,
        error,
    )
    return ReplicaResult(replica.pod, step, False, {}, error, attempt, duration)


async def run_step(
    step: str,
    replicas: Sequence[Replica],
    call: Callable[[Replica], Awaitable[dict[str, Any]]],
    policy: FanoutPolicy,
    *,
    pool: str = "",
) -> StepResult:
    """Run `call` on every replica concurrently (at most `policy.max_parallel` at once)."""
    start = time.monotonic()
    gate = asyncio.Semaphore(max(1, policy.max_parallel))

    async def one(replica: Replica) -> ReplicaResult:
        async with gate:
            return await _call_with_retries(step, replica, call, policy, pool)

    results = list(await asyncio.gather(*(one(r) for r in replicas)))
    duration = time.monotonic() - start
    if replicas:
        metrics.FANOUT_SECONDS.labels(step).observe(duration)
        log.info(
            "pool=%s step=%s replicas=%d failed=%d duration=%.3fs",
            pool,
            step,
            len(results),
            sum(not r.ok for r in results),
            duration,
        )
    return StepResult(step, results, duration)


async def probe(
    client: ReplicaClient, replicas: Sequence[Replica], policy: FanoutPolicy, *, pool: str = ""
) -> StepResult:
    """GET /v1/is_paused on every replica (short timeout, one retry)."""
    quick = FanoutPolicy(
        max_parallel=policy.max_parallel,
        attempts=min(2, policy.attempts),
        backoff_s=0.2,
        call_timeout_s=policy.call_timeout_s,
    )
    return await run_step(
        PROBE,
        replicas,
        lambda r: client.is_paused(r, timeout_s=quick.call_timeout_s),
        quick,
        pool=pool,
    )


async def pause(
    client: ReplicaClient, replicas: Sequence[Replica], policy: FanoutPolicy, *, pool: str = ""
) -> PauseOutcome:
    """Close admission on every replica, then fully pause every replica."""
    start = time.monotonic()
    rejected = await run_step(
        REJECT,
        replicas,
        lambda r: client.reject(r, timeout_s=policy.call_timeout_s, extra=policy.pause_extra),
        policy,
        pool=pool,
    )
    # A replica whose reject failed still gets the full pause: it closes admission too,
    # and the replica may have come back in the meantime.
    paused = await run_step(
        PAUSE,
        replicas,
        lambda r: client.pause(r, drain_timeout_s=policy.drain_timeout_s, extra=policy.pause_extra),
        policy,
        pool=pool,
    )
    figures = aggregate_pause(paused.results, time.monotonic() - start)
    return PauseOutcome(rejected, paused, figures)


async def resume(
    client: ReplicaClient, replicas: Sequence[Replica], policy: FanoutPolicy, *, pool: str = ""
) -> StepResult:
    return await run_step(
        RESUME,
        replicas,
        lambda r: client.resume(r, timeout_s=policy.call_timeout_s),
        policy,
        pool=pool,
    )


async def sync_weights(
    client: ReplicaClient,
    replicas: Sequence[Replica],
    version: str,
    path: str,
    policy: FanoutPolicy,
    *,
    pool: str = "",
    digest: str | None = None,
) -> StepResult:
    """update_weights on every replica. A result is ok only if the replica then reports `version`
    (and, when the pool names one, the engine has verified the checkpoint against `digest`)."""

    async def call(replica: Replica) -> dict[str, Any]:
        data = await client.update_weights(
            replica, version=version, path=path, timeout_s=policy.weights_timeout_s, digest=digest
        )
        reported = data.get("weights_version", data.get("version", version))
        if reported != version:
            raise ControlError(
                f"update_weights answered version {reported!r}, expected {version!r}",
                retryable=False,
            )
        return data

    return await run_step(UPDATE_WEIGHTS, replicas, call, policy, pool=pool)
