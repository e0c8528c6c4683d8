"""What the operator sees of each pod: Kubernetes status first, then the engine's own answer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import names
from .replica import Replica

# Engine states (GET /v1/is_paused "state") → replicaStatuses[].state
ENGINE_STATES = {
    "running": "Running",
    "rejecting": "Rejecting",
    "draining": "Draining",
    "paused": "Paused",
}
# Engine states before the engine process is up: not a replica the fan-out can act on yet.
ENGINE_NOT_UP = frozenset({"starting", "loading"})
# Pod-level states
PENDING, STARTING, UNREACHABLE, TERMINATING, FAILED = (
    "Pending",
    "Starting",
    "Unreachable",
    "Terminating",
    "Failed",
)

# Container / scheduling reasons that mean "this pod will not come up by itself".
STUCK_REASONS = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "CreateContainerConfigError",
        "CreateContainerError",
        "InvalidImageName",
        "RunContainerError",
        "Unschedulable",
    }
)


@dataclass
class ReplicaView:
    """One pod as the status reports it."""

    pod: str
    ip: str | None
    ready: bool
    live: bool  # Running, has an IP, not terminating: can be talked to
    state: str
    weights_version: str | None = None
    weights_digest: str | None = None  # sha256 of the checkpoint the engine serves
    weights_path: str | None = None  # the checkpoint the engine's weights came from
    pause_mode: str | None = None  # abort | retract | keep, while paused
    retracted: int | None = None  # requests the current pause retracted (tokens kept, KV freed)
    kept: int | None = None  # requests the current pause kept with their KV
    serving_label: str | None = None  # rlfleet.io/serving: "false" = fenced out of the Service
    fence_reason: str = ""  # why it is fenced (the pod's annotation, then this pass's error)
    message: str = ""
    reachable: bool = False
    stuck: bool = False  # a reason in STUCK_REASONS
    started: bool = False  # the container's startup probe passed: the engine was up

    def replica(self, port: int) -> Replica:
        return Replica(self.pod, f"http://{self.ip}:{port}")

    @property
    def fenced(self) -> bool:
        return self.serving_label == "false"

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pod": self.pod, "state": self.state, "ready": self.ready}
        if self.ip:
            out["ip"] = self.ip
        if self.weights_version is not None:
            out["weightsVersion"] = self.weights_version
        if self.weights_digest:
            out["weightsDigest"] = self.weights_digest
        if self.pause_mode:
            out["pauseMode"] = self.pause_mode
        if self.state == "Paused":
            for key, value in (("retractedRequests", self.retracted), ("keptRequests", self.kept)):
                if value is not None:
                    out[key] = value
        if self.fenced:
            out["fenced"] = True
            if self.fence_reason:
                out["fencedReason"] = self.fence_reason[:500]
        if self.message:
            out["message"] = self.message[:500]
        return out


def _crash(container_status: Mapping[str, Any]) -> str:
    """Why the container's last run failed, as "exit code N (reason), R restart(s)"; else ""."""
    last = (container_status.get("lastState") or {}).get("terminated") or {}
    restarts = container_status.get("restartCount") or 0
    code = last.get("exitCode")
    if not restarts or not code:
        return ""
    reason = f" ({last['reason']})" if last.get("reason") else ""
    return f"exit code {code}{reason}, {restarts} restart(s)"


def _why_not_running(pod: Mapping[str, Any]) -> tuple[str, bool]:
    """A human reason a pod is not (yet) serving, and whether it is stuck."""
    status = pod.get("status") or {}
    for cs in status.get("containerStatuses") or ():
        state = cs.get("state") or {}
        crashed = _crash(cs)
        for key in ("waiting", "terminated"):
            detail = state.get(key)
            if detail and detail.get("reason"):
                text = detail["reason"] + (
                    f": {detail['message']}" if detail.get("message") else ""
                )
                if crashed and crashed not in text:
                    text += f" ({crashed})"
                failed = key == "terminated" and detail.get("exitCode", 0) != 0
                return text, detail["reason"] in STUCK_REASONS or failed
        if crashed:
            # Running again after a crash, not up yet: a failing replica, not a new one.
            # Cleared as soon as the engine answers (apply_probe).
            return f"Restarting: {crashed}", True
    for cond in status.get("conditions") or ():
        if cond.get("status") == "False" and cond.get("reason"):
            text = cond["reason"] + (f": {cond['message']}" if cond.get("message") else "")
            return text, cond["reason"] in STUCK_REASONS
    return "", False


def view_of_pod(pod: Mapping[str, Any]) -> ReplicaView:
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    ip = status.get("podIP") or None
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or ()
    )
    why, stuck = _why_not_running(pod)
    started = any(cs.get("started") for cs in status.get("containerStatuses") or ())
    view = _view(meta, status, ip, ready, why, stuck, started)
    view.serving_label = (meta.get("labels") or {}).get(names.LABEL_SERVING)
    view.fence_reason = (meta.get("annotations") or {}).get(names.ANNOTATION_FENCED, "")
    return view


def _view(
    meta: Mapping[str, Any],
    status: Mapping[str, Any],
    ip: str | None,
    ready: bool,
    why: str,
    stuck: bool,
    started: bool,
) -> ReplicaView:
    phase = status.get("phase") or "Pending"
    if meta.get("deletionTimestamp"):
        return ReplicaView(meta["name"], ip, ready, False, TERMINATING, message=why)
    if phase in ("Failed", "Succeeded"):
        return ReplicaView(
            meta["name"],
            ip,
            False,
            False,
            FAILED,
            message=why or status.get("reason") or phase,
            stuck=True,
        )
    if phase != "Running" or not ip:
        return ReplicaView(meta["name"], ip, False, False, PENDING, message=why, stuck=stuck)
    return ReplicaView(
        meta["name"], ip, ready, True, STARTING, message=why, stuck=stuck, started=started
    )


def _count(data: Mapping[str, Any], key: str) -> int | None:
    value = data.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def apply_pause(view: ReplicaView, data: Mapping[str, Any]) -> None:
    """Fold a successful /v1/pause answer into the view (its mode and settled requests)."""
    view.state = "Paused"
    view.message = "forced: drain timeout reached" if data.get("forced") else ""
    view.pause_mode = str(data.get("mode") or "") or view.pause_mode
    if not data.get("already_paused"):  # else the answer has no figures; the probe's stand
        view.retracted, view.kept = _count(data, "retracted"), _count(data, "kept")


def apply_probe(view: ReplicaView, ok: bool, data: Mapping[str, Any], error: str | None) -> None:
    """Fold the engine's /v1/is_paused answer (or the failure) into the view."""
    engine_state = str(data.get("state", "")).lower() if ok else ""
    if ok and engine_state in ENGINE_NOT_UP:
        # The API server answers before its engine process is up (model loading): it is
        # neither running nor paused yet. It comes up in the state the pool's state
        # ConfigMap gave it; the fan-out leaves it alone until then.
        view.reachable = False
        view.state = STARTING
        view.weights_version = None
        view.message = f"engine {engine_state}"
        view.stuck = False
    elif ok:
        view.reachable = True
        view.state = ENGINE_STATES.get(engine_state) or (
            "Paused" if data.get("is_paused") else "Running"
        )
        version = data.get("weights_version")
        view.weights_version = str(version) if version else None
        view.weights_digest = str(data.get("weights_digest") or "") or None
        view.weights_path = str(data.get("weights_path") or "") or None
        view.pause_mode = str(data.get("mode") or "") or None
        view.retracted, view.kept = _count(data, "retracted"), _count(data, "kept")
        view.message = ""
        view.stuck = False
    else:
        view.reachable = False
        if view.stuck and view.message:
            # Crash-looping (or otherwise failing to start): the pod's own reason says more
            # than "connection refused", and it is not merely starting.
            view.state = FAILED
            return
        # Never up yet and not answering: still starting (it starts paused if the pool is).
        # An engine that was up (ready, or its startup probe passed) and no longer answers
        # is hung or dying: Unreachable, whatever its readiness probe says by now.
        view.state = UNREACHABLE if (view.ready or view.started) else STARTING
        view.message = error or view.message
