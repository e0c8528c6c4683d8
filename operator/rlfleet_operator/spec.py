"""The InferencePool spec as a typed, defaulted value (the CRD schema validates; this reads)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import names

DEFAULT_PORT = 8180
DEFAULT_PAUSE_TIMEOUT_S = 30.0
DEFAULT_MAX_PARALLEL = 32
# Flags the operator sets itself; an engineArgs entry for one of them is ignored.
RESERVED_ARGS = frozenset(
    {"host", "port", "control-token", "start-paused", "weights-path", "weights-version"}
)


FENCE, ROLLBACK = "Fence", "Rollback"  # spec.weights.failurePolicy


@dataclass(frozen=True)
class Weights:
    version: str
    path: str
    digest: str | None = None  # sha256 the engine verifies the checkpoint against

    @property
    def key(self) -> str:
        """Identity of one weights request: a new version, path or digest is a new request."""
        return f"{self.version}|{self.path}|{self.digest or ''}"

    def served_by(self, version: str | None, digest: str | None) -> bool:
        """A replica reporting (version, digest) serves these weights (digest checked if known)."""
        if version != self.version:
            return False
        return not (self.digest and digest and digest.lower() != self.digest.lower())

    def to_status(self) -> dict[str, str]:
        out = {"version": self.version, "path": self.path}
        if self.digest:
            out["digest"] = self.digest
        return out

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> Weights | None:
        """`{version, path[, digest]}` (spec.weights, status records) → Weights; None if no version."""
        if not data or not data.get("version"):
            return None
        return cls(str(data["version"]), str(data.get("path") or ""), data.get("digest") or None)


@dataclass(frozen=True)
class PauseSpec:
    timeout_s: float = DEFAULT_PAUSE_TIMEOUT_S
    max_parallel: int = DEFAULT_MAX_PARALLEL
    # mode ("abort" | "retract" | "keep") and admission ("reject" | "queue"): passed through
    # to every replica's /v1/pause body, both stages.
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PoolSpec:
    name: str
    namespace: str
    image: str
    replicas: int = 1
    port: int = DEFAULT_PORT
    model: str | None = None
    engine_args: Mapping[str, Any] = field(default_factory=dict)
    resources: Mapping[str, Any] = field(default_factory=dict)
    env: tuple[Mapping[str, str], ...] = ()
    node_selector: Mapping[str, str] = field(default_factory=dict)
    image_pull_policy: str | None = None
    paused: bool = False
    weights: Weights | None = None
    failure_policy: str = FENCE  # what a replica failing a weights load leads to
    pause: PauseSpec = field(default_factory=PauseSpec)
    control_token_secret: str | None = None

    @property
    def token_secret_name(self) -> str:
        """The Secret holding the control token: the user's, or one the operator creates."""
        return self.control_token_secret or names.default_token_secret_name(self.name)

    @property
    def owns_token_secret(self) -> bool:
        return not self.control_token_secret

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> PoolSpec:
        meta = body.get("metadata") or {}
        spec = body.get("spec") or {}
        weights = spec.get("weights") or None
        pause = dict(spec.get("pause") or {})
        return cls(
            name=meta["name"],
            namespace=meta.get("namespace") or "default",
            image=spec.get("image") or "",
            replicas=int(spec.get("replicas", 1)),
            port=int(spec.get("port", DEFAULT_PORT)),
            model=spec.get("model") or None,
            engine_args=dict(spec.get("engineArgs") or {}),
            resources=dict(spec.get("resources") or {}),
            env=tuple(dict(e) for e in spec.get("env") or ()),
            node_selector=dict(spec.get("nodeSelector") or {}),
            image_pull_policy=spec.get("imagePullPolicy") or None,
            paused=bool(spec.get("paused", False)),
            weights=Weights.from_mapping(weights),
            failure_policy=str((weights or {}).get("failurePolicy") or FENCE),
            pause=PauseSpec(
                timeout_s=float(pause.pop("timeoutSeconds", DEFAULT_PAUSE_TIMEOUT_S)),
                max_parallel=int(pause.pop("maxParallel", DEFAULT_MAX_PARALLEL)),
                extra=pause,
            ),
            control_token_secret=spec.get("controlTokenSecret") or None,
        )


def flag_name(key: str) -> str:
    """`maxNumSeqs` / `max_num_seqs` / `--max-num-seqs` → `max-num-seqs`."""
    key = key.lstrip("-").replace("_", "-")
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"-\1", key).lower()


def engine_args_to_argv(engine_args: Mapping[str, Any]) -> list[str]:
    """engineArgs → CLI flags: `true` → bare flag, `false`/null → omitted, lists repeat the flag."""
    argv: list[str] = []
    for key in sorted(engine_args):
        flag = flag_name(key)
        if flag in RESERVED_ARGS:
            continue
        value = engine_args[key]
        values = value if isinstance(value, list) else [value]
        for v in values:
            if v is None or v is False:
                continue
            argv.append(f"--{flag}")
            if v is not True:
                argv.append(str(v))
    return argv


def ignored_engine_args(engine_args: Mapping[str, Any]) -> list[str]:
    """engineArgs keys the operator overrides (reported, not applied)."""
    return sorted(k for k in engine_args if flag_name(k) in RESERVED_ARGS)
