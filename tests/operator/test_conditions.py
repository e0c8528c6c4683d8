"""Conditions keep lastTransitionTime unless their status changes."""

from __future__ import annotations

from rlfleet_operator import conditions as c


def test_transition_time_changes_only_with_status() -> None:
    first = c.merge_conditions(
        [], [c.condition(c.PAUSED, False, "Running", generation=1)], now="2026-01-01T00:00:00Z"
    )
    assert first[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    # Same status, new reason/message/generation: time kept.
    second = c.merge_conditions(
        first,
        [c.condition(c.PAUSED, False, "Resuming", "x", generation=2)],
        now="2026-01-01T00:01:00Z",
    )
    assert second[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert (second[0]["reason"], second[0]["observedGeneration"]) == ("Resuming", 2)
    # Status flips: time moves.
    third = c.merge_conditions(
        second,
        [c.condition(c.PAUSED, True, "AllReplicasPaused", generation=3)],
        now="2026-01-01T00:02:00Z",
    )
    assert third[0]["lastTransitionTime"] == "2026-01-01T00:02:00Z" and third[0]["status"] == "True"


def test_shape_order_and_unknown_conditions_kept() -> None:
    old = [{"type": "Custom", "status": "True", "lastTransitionTime": "t0"}]
    merged = c.merge_conditions(
        old,
        [c.condition(c.WEIGHTS_SYNCED, True, "A"), c.condition(c.READY, "Unknown", "B")],
        now="t1",
    )
    assert [m["type"] for m in merged] == ["Ready", "WeightsSynced", "Custom"]
    assert merged[0] == {
        "type": "Ready",
        "status": "Unknown",
        "reason": "B",
        "message": "",
        "lastTransitionTime": "t1",
    }
    assert c.is_true(merged, c.WEIGHTS_SYNCED) and not c.is_true(merged, c.PAUSED)


def test_now_is_rfc3339_utc() -> None:
    now = c.now_iso()
    assert now.endswith("Z") and "T" in now and "." not in now
