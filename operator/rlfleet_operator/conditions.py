"""Status conditions (Kubernetes shape) and phases."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

READY = "Ready"
PAUSED = "Paused"
WEIGHTS_SYNCED = "WeightsSynced"
CONDITION_TYPES = (READY, PAUSED, WEIGHTS_SYNCED)

RUNNING = "Running"
PAUSING = "Pausing"
PAUSED_PHASE = "Paused"
SYNCING_WEIGHTS = "SyncingWeights"
RESUMING = "Resuming"
DEGRADED = "Degraded"
PHASES = (RUNNING, PAUSING, PAUSED_PHASE, SYNCING_WEIGHTS, RESUMING, DEGRADED)


def now_iso() -> str:
    """UTC now, RFC 3339 with second precision (what metav1.Time serialises)."""
    return (
        dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    )


def condition(
    type_: str, status: bool | str, reason: str, message: str = "", *, generation: int | None = None
) -> dict[str, Any]:
    """A condition without lastTransitionTime (`merge_conditions` sets it)."""
    value = status if isinstance(status, str) else ("True" if status else "False")
    cond: dict[str, Any] = {"type": type_, "status": value, "reason": reason, "message": message}
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond


def merge_conditions(
    old: Sequence[Mapping[str, Any]] | None,
    new: Sequence[Mapping[str, Any]],
    *,
    now: str | None = None,
) -> list[dict[str, Any]]:
    """Conditions `new` with lastTransitionTime carried over from `old` unless `status` changed.

    Conditions of `old` whose type is not in `new` are kept unchanged.
    """
    now = now or now_iso()
    previous = {c.get("type"): c for c in old or ()}
    merged: list[dict[str, Any]] = []
    for cond in new:
        out = dict(cond)
        before = previous.pop(cond["type"], None)
        if (
            before is not None
            and before.get("status") == cond["status"]
            and before.get("lastTransitionTime")
        ):
            out["lastTransitionTime"] = before["lastTransitionTime"]
        else:
            out["lastTransitionTime"] = now
        merged.append(out)
    merged.extend(dict(c) for c in previous.values())
    order = {t: i for i, t in enumerate(CONDITION_TYPES)}
    merged.sort(key=lambda c: order.get(c.get("type"), len(order)))
    return merged


def get_condition(
    conditions: Sequence[Mapping[str, Any]] | None, type_: str
) -> Mapping[str, Any] | None:
    for cond in conditions or ():
        if cond.get("type") == type_:
            return cond
    return None


def is_true(conditions: Sequence[Mapping[str, Any]] | None, type_: str) -> bool:
    cond = get_condition(conditions, type_)
    return bool(cond and cond.get("status") == "True")
