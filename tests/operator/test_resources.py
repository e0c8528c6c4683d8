"""Child manifests built from a pool spec."""

from __future__ import annotations

import base64

from rlfleet_operator import names, reconcile, resources
from rlfleet_operator.spec import (
    PoolSpec,
    Weights,
    engine_args_to_argv,
    flag_name,
    ignored_engine_args,
)

from .fakes import pool_body

BODY = pool_body(
    "rollout",
    replicas=4,
    port=9000,
    model="/models/qwen",
    engineArgs={
        "maxNumSeqs": 16,
        "runner": "synthetic",
        "noPrefixCache": True,
        "debug_step_delay_ms": None,
        "port": 1,
    },
    resources={"limits": {"nvidia.com/gpu": 1, "memory": "16Gi"}, "requests": {"cpu": "2"}},
    env=[{"name": "HF_HOME", "value": "/cache"}, {"name": "POD_IP", "value": "spoofed"}],
    paused=True,
    weights={"version": "step-3", "path": "/ckpt/3"},
    pause={"timeoutSeconds": 12.5, "maxParallel": 8, "mode": "retract"},
)
SPEC = PoolSpec.from_body(BODY)


def env_by_name(container: dict) -> dict:
    return {e["name"]: e for e in container["env"]}


def test_spec_parsing_and_defaults() -> None:
    assert SPEC.weights == Weights("step-3", "/ckpt/3")
    assert (SPEC.pause.timeout_s, SPEC.pause.max_parallel, dict(SPEC.pause.extra)) == (
        12.5,
        8,
        {"mode": "retract"},
    )
    assert SPEC.token_secret_name == "rollout-control-token" and SPEC.owns_token_secret
    bare = PoolSpec.from_body(pool_body("p"))
    assert (bare.paused, bare.weights, bare.pause.timeout_s, bare.port) == (False, None, 30.0, 8180)


def test_engine_args_become_flags() -> None:
    assert (
        flag_name("maxNumSeqs")
        == "max-num-seqs"
        == flag_name("max_num_seqs")
        == flag_name("--max-num-seqs")
    )
    assert engine_args_to_argv(SPEC.engine_args) == [
        "--max-num-seqs",
        "16",
        "--no-prefix-cache",
        "--runner",
        "synthetic",
    ]
    assert ignored_engine_args(SPEC.engine_args) == ["port"]


def test_statefulset() -> None:
    sts = resources.statefulset(SPEC, BODY)
    meta, spec = sts["metadata"], sts["spec"]
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "rlfleet.io/v1alpha1",
            "kind": "InferencePool",
            "name": "rollout",
            "uid": "uid-123",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert spec["replicas"] == 4 and spec["podManagementPolicy"] == "Parallel"
    assert spec["serviceName"] == "rollout-headless"
    assert spec["selector"]["matchLabels"] == names.selector_labels("rollout")
    template = spec["template"]
    assert names.selector_labels("rollout").items() <= template["metadata"]["labels"].items()
    # A new or restarted pod serves; the serving label is never in the (immutable) selector.
    assert template["metadata"]["labels"]["rlfleet.io/serving"] == "true"
    assert "rlfleet.io/serving" not in spec["selector"]["matchLabels"]
    (container,) = template["spec"]["containers"]
    assert container["command"] == ["python", "-m", "engine_pod"]
    assert container["args"][:6] == [
        "--host",
        "$(POD_IP)",
        "--port",
        "9000",
        "--model",
        "/models/qwen",
    ]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["ports"] == [{"name": "http", "containerPort": 9000, "protocol": "TCP"}]


def test_env_reads_state_configmap_token_secret_and_pod_ip() -> None:
    (container,) = resources.statefulset(SPEC, BODY)["spec"]["template"]["spec"]["containers"]
    env = env_by_name(container)
    assert env["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["RLFLEET_CONTROL_TOKEN"]["valueFrom"] == {
        "secretKeyRef": {"name": "rollout-control-token", "key": "token"}
    }
    for var, key in [
        ("RLFLEET_START_PAUSED", "paused"),
        ("RLFLEET_WEIGHTS_PATH", "weightsPath"),
        ("RLFLEET_WEIGHTS_VERSION", "weightsVersion"),
    ]:
        assert env[var]["valueFrom"] == {"configMapKeyRef": {"name": "rollout-state", "key": key}}
    # Optional: a state ConfigMap from an older operator has no digest yet; the pod still starts.
    assert env["RLFLEET_WEIGHTS_DIGEST"]["valueFrom"] == {
        "configMapKeyRef": {"name": "rollout-state", "key": "weightsDigest", "optional": True}
    }
    assert env["HF_HOME"] == {"name": "HF_HOME", "value": "/cache"}
    assert [e for e in container["env"] if e["name"] == "POD_IP"] == [
        env["POD_IP"]
    ]  # user env cannot override


def test_pause_or_weights_change_leaves_the_pod_template_alone() -> None:
    other = PoolSpec.from_body(
        {
            **BODY,
            "spec": {**BODY["spec"], "paused": False, "weights": {"version": "v9", "path": "/x"}},
        }
    )
    assert resources.statefulset(other, BODY) == resources.statefulset(SPEC, BODY)


def test_services_configmap_secret() -> None:
    svc = resources.client_service(SPEC, BODY)
    headless = resources.headless_service(SPEC, BODY)
    assert svc["metadata"]["name"] == "rollout" and "clusterIP" not in svc["spec"]
    assert (
        headless["spec"]["clusterIP"] == "None"
        and headless["spec"]["publishNotReadyAddresses"] is True
    )
    assert svc["spec"]["ports"][0]["port"] == 9000
    # Clients reach only replicas labelled serving (a fenced one is out); control reaches all.
    assert svc["spec"]["selector"] == {
        **names.selector_labels("rollout"),
        "rlfleet.io/serving": "true",
    }
    assert headless["spec"]["selector"] == names.selector_labels("rollout")
    cm = resources.state_configmap(SPEC, BODY)
    assert cm["metadata"]["name"] == "rollout-state"
    assert cm["data"] == {
        "paused": "true",
        "weightsPath": "/ckpt/3",
        "weightsVersion": "step-3",
        "weightsDigest": "",
    }
    secret = resources.token_secret(SPEC, BODY, token="abc")
    assert base64.b64decode(secret["data"]["token"]) == b"abc"
    assert len(base64.b64decode(resources.token_secret(SPEC, BODY)["data"]["token"])) >= 32
    for manifest in (svc, headless, cm, secret):
        assert manifest["metadata"]["ownerReferences"][0]["uid"] == "uid-123"
        assert manifest["metadata"]["namespace"] == "ml"


def test_user_named_secret_is_used() -> None:
    spec = PoolSpec.from_body(pool_body("p", controlTokenSecret="mine"))
    assert not spec.owns_token_secret
    (container,) = resources.statefulset(spec, pool_body("p"))["spec"]["template"]["spec"][
        "containers"
    ]
    assert (
        env_by_name(container)["RLFLEET_CONTROL_TOKEN"]["valueFrom"]["secretKeyRef"]["name"]
        == "mine"
    )


def test_state_configmap_carries_the_weights_digest_for_restarted_replicas() -> None:
    """A replica restarted after a digest-checked sync verifies the same digest at start."""
    weights = Weights("step-4", "/ckpt/4", "ab" * 32)
    assert resources.state_data(True, weights)["weightsDigest"] == "ab" * 32
    assert reconcile.weights_from_state(resources.state_data(False, weights)) == weights
    assert reconcile.weights_from_state(resources.state_data(False, None)) is None
