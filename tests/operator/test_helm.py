"""The Helm chart lints and renders (skipped where no helm binary is found)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "rlfleet"
HELM = shutil.which("helm") or next(
    (
        str(p)
        for p in [Path.home() / ".cache/rlfleet/tools/bin/helm"]
        if p.exists() and os.access(p, os.X_OK)
    ),
    None,
)
needs_helm = pytest.mark.skipif(HELM is None, reason="helm binary not found")


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    assert HELM is not None
    return subprocess.run([HELM, *args], capture_output=True, text=True, timeout=60, check=False)


def render(*sets: str) -> list[dict[str, Any]]:
    args = ["template", "r", str(CHART), "-n", "rlfleet-system", "--include-crds"]
    for s in sets:
        args += ["--set", s]
    out = helm(*args)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_values_schema_is_json() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["properties"]["operator"]["properties"]["replicas"]["maximum"] == 1


@needs_helm
def test_lint() -> None:
    for extra in (
        [],
        [
            "--set",
            "samplePool.enabled=true,networkPolicy.enabled=true",
            "--set",
            "operator.watchNamespaces={ml}",
        ],
    ):
        out = helm("lint", str(CHART), *extra)
        assert out.returncode == 0, out.stdout + out.stderr


@needs_helm
def test_default_render() -> None:
    docs = render()
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        [
            "CustomResourceDefinition",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Service",
            "Deployment",
            "Pod",
        ]
    )
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "rlfleet_operator"]
    assert deploy["spec"]["template"]["spec"]["serviceAccountName"] == "r-rlfleet-operator"
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    rules = {
        (g, r): set(rule["verbs"])
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }
    assert rules[("rlfleet.io", "inferencepools/status")] == {"get", "patch"}
    assert rules[("", "secrets")] == {"get", "create"}
    assert rules[("", "pods")] == {"get", "list", "watch", "patch"}  # patch: fencing label
    assert rules[("apiextensions.k8s.io", "customresourcedefinitions")] == {"get", "list", "watch"}
    assert all("delete" not in verbs and "*" not in verbs for verbs in rules.values())
    test_pod = next(d for d in docs if d["kind"] == "Pod")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"


@needs_helm
def test_namespaced_render_with_policy_and_sample() -> None:
    docs = render(
        "operator.watchNamespaces={ml,rl}", "networkPolicy.enabled=true", "samplePool.enabled=true"
    )
    roles = [d for d in docs if d["kind"] == "Role"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["ml", "rl"]
    cluster = next(d for d in docs if d["kind"] == "ClusterRole")
    assert [r["resources"] for r in cluster["rules"]] == [["customresourcedefinitions"]]
    args = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"][
        "containers"
    ][0]["args"]
    assert "--namespace=ml" in args and "--namespace=rl" in args
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "rlfleet-engine"
    }
    pool = next(d for d in docs if d["kind"] == "InferencePool")
    assert pool["apiVersion"] == "rlfleet.io/v1alpha1" and pool["spec"]["engineArgs"] == {
        "runner": "synthetic"
    }


@needs_helm
def test_schema_rejects_bad_values() -> None:
    out = helm("template", "r", str(CHART), "--set", "operator.replicas=2")
    assert out.returncode != 0 and "replicas" in out.stderr
