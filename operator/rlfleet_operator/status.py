"""The pool's status from what was observed: phase, conditions, counts, per-replica rows."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from . import conditions as c
from . import names
from .pods import ReplicaView
from .spec import PoolSpec


def _listing(items: Mapping[str, str], limit: int = 5) -> str:
    parts = [f"{pod}: {msg}" for pod, msg in sorted(items.items())[:limit]]
    if len(items) > limit:
        parts.append(f"... and {len(items) - limit} more")
    return "; ".join(parts)


def common_version(views: Sequence[ReplicaView]) -> str | None:
    """The weights version every reachable replica reports, "mixed", or None if none answered."""
    versions = Counter(v.weights_version or "" for v in views if v.reachable)
    if not versions:
        return None
    if len(versions) == 1:
        return next(iter(versions))
    return "mixed"


def build_status(
    spec: PoolSpec,
    generation: int | None,
    views: Sequence[ReplicaView],
    old: Mapping[str, Any],
    *,
    failures: Mapping[str, str] | None = None,
    problem: tuple[str, str] | None = None,
    now: str | None = None,
) -> dict[str, Any]:
    """Full status. `failures`: pod → error of this pass's fan-out; `problem`: (reason, message) pool-wide."""
    failures = dict(failures or {})
    live = [v for v in views if v.live]
    reachable = [v for v in live if v.reachable]
    unreachable = {v.pod: v.message or "not answering" for v in live if v.state == "Unreachable"}
    starting = [v for v in live if v.state == "Starting"]
    stuck = {v.pod: v.message for v in views if v.stuck}
    paused_n = sum(v.state == "Paused" for v in reachable)
    ready_n = sum(v.ready for v in views)
    trouble = {**stuck, **unreachable, **failures}

    # Ready
    missing = max(0, spec.replicas - len(views))
    if problem:
        ready = c.condition(c.READY, False, problem[0], problem[1], generation=generation)
    elif ready_n >= spec.replicas and not missing:
        ready = c.condition(
            c.READY,
            True,
            "AllReplicasReady",
            f"{ready_n}/{spec.replicas} ready",
            generation=generation,
        )
    else:
        not_ready = {v.pod: v.message or v.state for v in views if not v.ready}
        msg = f"{ready_n}/{spec.replicas} ready"
        if missing:
            msg += f"; {missing} pod(s) not created yet"
        if not_ready:
            msg += "; " + _listing(not_ready)
        ready = c.condition(c.READY, False, "ReplicasNotReady", msg, generation=generation)

    # Paused
    note = f" ({len(starting)} starting, will start paused)" if starting else ""
    if spec.paused:
        not_paused = {v.pod: v.state for v in reachable if v.state != "Paused"}
        if failures or unreachable:
            paused = c.condition(
                c.PAUSED,
                False,
                "PauseIncomplete",
                _listing({**unreachable, **failures}),
                generation=generation,
            )
        elif not_paused:
            paused = c.condition(
                c.PAUSED, False, "Pausing", _listing(not_paused), generation=generation
            )
        else:
            paused = c.condition(
                c.PAUSED,
                True,
                "AllReplicasPaused",
                f"{paused_n}/{len(reachable)} replicas paused{note}",
                generation=generation,
            )
    else:
        # Paused describes what the replicas do, not what spec asks: it turns False only once
        # every replica serves again, so `kubectl wait --for=condition=Paused=false` means
        # resumed (as Paused=True means paused), never "a resume was requested".
        still = {v.pod: v.state for v in reachable if v.state != "Running"}
        if failures:
            paused = c.condition(
                c.PAUSED,
                bool(still),
                "ResumeIncomplete",
                _listing(failures),
                generation=generation,
            )
        elif still:
            paused = c.condition(c.PAUSED, True, "Resuming", _listing(still), generation=generation)
        else:
            paused = c.condition(
                c.PAUSED,
                False,
                "Running",
                f"admission open on {len(reachable)} replicas",
                generation=generation,
            )

    # WeightsSynced
    version = common_version(views)
    if spec.weights is None:
        synced = c.condition(
            c.WEIGHTS_SYNCED,
            True,
            "NoWeightsRequested",
            f"serving {version or 'the model weights'}",
            generation=generation,
        )
    else:
        want = spec.weights.version
        stale = {
            v.pod: f"serves {v.weights_version!r}" for v in reachable if v.weights_version != want
        }
        sync_failures = {p: m for p, m in failures.items() if p in stale}
        if sync_failures:
            synced = c.condition(
                c.WEIGHTS_SYNCED,
                False,
                "SyncFailed",
                _listing(sync_failures),
                generation=generation,
            )
        elif stale and not spec.paused:
            synced = c.condition(
                c.WEIGHTS_SYNCED,
                False,
                "PauseRequired",
                f"{len(stale)} replica(s) not on {want!r}; weights load only while the pool is paused",
                generation=generation,
            )
        elif stale:
            synced = c.condition(
                c.WEIGHTS_SYNCED, False, "Syncing", _listing(stale), generation=generation
            )
        elif unreachable:
            synced = c.condition(
                c.WEIGHTS_SYNCED,
                False,
                "ReplicasUnreachable",
                _listing(unreachable),
                generation=generation,
            )
        else:
            synced = c.condition(
                c.WEIGHTS_SYNCED,
                True,
                "AllReplicasSynced",
                f"{len(reachable)} replicas serve {want!r}{note}",
                generation=generation,
            )

    # Phase
    if problem or trouble:
        phase = c.DEGRADED
    elif spec.paused:
        phase = c.PAUSED_PHASE if paused["status"] == "True" else c.PAUSING
    else:
        phase = c.RUNNING if paused["reason"] == "Running" else c.RESUMING

    status = dict(old)
    status.update(
        {
            "phase": phase,
            "observedGeneration": generation,
            "conditions": c.merge_conditions(
                old.get("conditions"), [ready, paused, synced], now=now
            ),
            "replicas": len(views),
            "readyReplicas": ready_n,
            "pausedReplicas": paused_n,
            "ready": f"{ready_n}/{spec.replicas}",
            "selector": names.selector_string(spec.name),
            "replicaStatuses": [v.to_status() for v in sorted(views, key=lambda v: v.pod)],
        }
    )
    if version is not None:
        status["weightsVersion"] = version
    digests = {v.weights_digest for v in reachable}
    digest = digests.pop() if len(digests) == 1 else None
    if digest:
        status["weightsDigest"] = digest  # one digest across the pool
    elif status.get("weightsDigest"):
        status["weightsDigest"] = None  # replicas disagree now: null clears it in the merge patch
    if version is None and spec.weights is not None and not views:
        status["weightsVersion"] = (
            spec.weights.version if spec.paused else status.get("weightsVersion", "")
        )
    return status
