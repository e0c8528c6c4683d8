"""The CRD: same file in crds/ and in the chart, parses, has the schema the issue asks for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "inferencepools.rlfleet.io.yaml"
CHART_CRD = ROOT / "helm" / "rlfleet" / "crds" / "inferencepools.rlfleet.io.yaml"


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD.read_text())


@pytest.fixture(scope="module")
def schema(crd: dict[str, Any]) -> dict[str, Any]:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_chart_copy_is_byte_identical() -> None:
    assert not CHART_CRD.is_symlink()
    assert CHART_CRD.read_bytes() == CRD.read_bytes()


def test_names_version_subresources(crd: dict[str, Any]) -> None:
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == "inferencepools.rlfleet.io"
    spec = crd["spec"]
    assert (spec["group"], spec["scope"]) == ("rlfleet.io", "Namespaced")
    assert spec["names"]["kind"] == "InferencePool" and spec["names"]["plural"] == "inferencepools"
    assert spec["names"]["shortNames"] == ["ipool"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    assert [c["name"].upper() for c in version["additionalPrinterColumns"]] == [
        "READY",
        "PAUSED",
        "WEIGHTS",
        "PHASE",
        "AGE",
    ]


def test_status_schema(schema: dict[str, Any]) -> None:
    status = schema["properties"]["status"]["properties"]
    assert status["phase"]["enum"] == [
        "Running",
        "Pausing",
        "Paused",
        "SyncingWeights",
        "Resuming",
        "Degraded",
    ]
    cond = status["conditions"]["items"]["properties"]
    assert {
        "type",
        "status",
        "reason",
        "message",
        "observedGeneration",
        "lastTransitionTime",
    } <= set(cond)
    assert {"pod", "state", "weightsVersion", "message"} <= set(
        status["replicaStatuses"]["items"]["properties"]
    )
    assert {
        "startedAt",
        "completedAt",
        "durationSeconds",
        "abortedRequests",
        "partialTokens",
    } <= set(status["lastPause"]["properties"])
    # Issue 8: what a weights transaction reports (unknown status fields would be pruned).
    replica = status["replicaStatuses"]["items"]["properties"]
    assert {"pauseMode", "retractedRequests", "keptRequests", "weightsDigest", "fenced"} <= set(
        replica
    )
    assert {"version", "path", "digest"} <= set(status["committedWeights"]["properties"])
    assert {"failedVersion", "restoredVersion", "reason", "at", "failed", "restored"} <= set(
        status["rollback"]["properties"]
    )
    assert "fencedReplicas" in status


def test_failure_policy_is_fence_or_rollback(schema: dict[str, Any]) -> None:
    policy = schema["properties"]["spec"]["properties"]["weights"]["properties"]["failurePolicy"]
    assert (policy["enum"], policy["default"]) == (["Fence", "Rollback"], "Fence")


def _structural(node: Any, path: str = "") -> None:
    """Every schema node has a type, unless it is int-or-string or preserves unknown fields (k8s structural rule)."""
    if not isinstance(node, dict):
        return
    if path and "type" not in node:
        assert node.get("x-kubernetes-int-or-string") or node.get(
            "x-kubernetes-preserve-unknown-fields"
        ), path
    for key, child in (node.get("properties") or {}).items():
        _structural(child, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        _structural(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        _structural(node["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural(schema: dict[str, Any]) -> None:
    _structural(schema)


GOOD = {
    "image": "rlfleet/rlfleet:0.1.0",
    "replicas": 2,
    "paused": True,
    "weights": {"version": "v1", "path": "/w"},
    "pause": {"timeoutSeconds": 5},
    "resources": {"limits": {"nvidia.com/gpu": 1, "memory": "8Gi"}},
    "engineArgs": {"maxNumSeqs": 8},
}


@pytest.mark.parametrize(
    "spec",
    [
        {**GOOD, "replicas": -1},
        {k: v for k, v in GOOD.items() if k != "image"},
        {**GOOD, "pause": {"timeoutSeconds": 0}},
        {**GOOD, "port": 70000},
        {**GOOD, "weights": {"version": "v1"}},
        {**GOOD, "paused": "yes"},
        {**GOOD, "controlTokenSecret": "Not_A_Name"},
        {**GOOD, "weights": {"version": "v1", "path": "/w", "failurePolicy": "Retry"}},
    ],
)
def test_invalid_specs_are_rejected(schema: dict[str, Any], spec: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(schema).validate({"spec": spec})


def test_valid_spec_passes(schema: dict[str, Any]) -> None:
    jsonschema.Draft4Validator(schema).validate(
        {"apiVersion": "rlfleet.io/v1alpha1", "kind": "InferencePool", "spec": GOOD}
    )
