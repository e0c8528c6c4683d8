"""API coordinates, labels and child-object names shared by every module."""

from __future__ import annotations

GROUP = "rlfleet.io"
VERSION = "v1alpha1"
KIND = "InferencePool"
PLURAL = "inferencepools"
API_VERSION = f"{GROUP}/{VERSION}"
FULL_RESOURCE = f"{PLURAL}.{GROUP}"  # what kubectl should be given: never the ambiguous plain kind

FIELD_MANAGER = "rlfleet-operator"
CONTAINER = "engine"
TOKEN_KEY = "token"

LABEL_POOL = "rlfleet.io/pool"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
ENGINE_APP = "rlfleet-engine"
# "true" on a replica the client Service sends traffic to; "false" fences it out (never in the
# StatefulSet selector: that one is immutable, and a fenced pod must stay the set's own).
LABEL_SERVING = "rlfleet.io/serving"
ANNOTATION_FENCED = "rlfleet.io/fenced"  # why a fenced replica is out of serving

# Keys of the `<pool>-state` ConfigMap, read by every pod through configMapKeyRef env.
STATE_PAUSED = "paused"
STATE_WEIGHTS_PATH = "weightsPath"
STATE_WEIGHTS_VERSION = "weightsVersion"
STATE_WEIGHTS_DIGEST = "weightsDigest"


def selector_labels(pool: str) -> dict[str, str]:
    """Labels that select a pool's pods (immutable: the StatefulSet selector)."""
    return {LABEL_NAME: ENGINE_APP, LABEL_POOL: pool}


def serving_selector(pool: str) -> dict[str, str]:
    """The client Service's selector: the pool's pods that are not fenced."""
    return {**selector_labels(pool), LABEL_SERVING: "true"}


def common_labels(pool: str) -> dict[str, str]:
    """Labels put on every child object of a pool."""
    return {
        **selector_labels(pool),
        LABEL_INSTANCE: pool,
        LABEL_COMPONENT: "engine",
        LABEL_MANAGED_BY: FIELD_MANAGER,
    }


def selector_string(pool: str) -> str:
    """The label selector as a string (status.selector, list calls)."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(pool).items()))


def statefulset_name(pool: str) -> str:
    return pool


def service_name(pool: str) -> str:
    return pool


def headless_service_name(pool: str) -> str:
    return f"{pool}-headless"


def state_configmap_name(pool: str) -> str:
    return f"{pool}-state"


def default_token_secret_name(pool: str) -> str:
    return f"{pool}-control-token"
