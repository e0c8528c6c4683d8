"""Unit tests of the node agent's pieces (no cluster needed)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from e2e.node_agent import IpPool
from e2e.podenv import EnvError, command_line, expand, quantity, resolve_env
from e2e.probes import Prober


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)-$(B)", "1-two"),
        ("$$(A)", "$(A)"),
        ("$(MISSING)", "$(MISSING)"),
        ("$(A", "$(A"),
        ("cost $5 $", "cost $5 $"),
        ("$$$(A)", "$1"),
        ("", ""),
    ],
)
def test_expand(text: str, expected: str) -> None:
    assert expand(text, {"A": "1", "B": "two"}) == expected


def _secret(**data: str) -> dict:
    return {
        "kind": "Secret",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


POD = {
    "metadata": {"name": "p-0", "namespace": "ns", "uid": "u1", "labels": {"app": "x"}},
    "spec": {"nodeName": "n1", "serviceAccountName": "sa"},
}
OBJECTS = {
    ("configmaps", "cm"): {
        "kind": "ConfigMap",
        "data": {"mode": "fast", "bad key": "skip", "A": "from-cm"},
    },
    ("secrets", "sec"): _secret(token="t0k", A="from-secret"),
}


def fetch(kind: str, name: str) -> dict | None:
    return OBJECTS.get((kind, name))


def test_resolve_env_order_and_sources() -> None:
    container = {
        "envFrom": [{"configMapRef": {"name": "cm"}}, {"secretRef": {"name": "sec"}, "prefix": "S_"},
                    {"configMapRef": {"name": "nope", "optional": True}}],
        "env": [
            {"name": "A", "value": "explicit-$(mode)"},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "TOK", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "token"}}},
            {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "absent", "optional": True}}},
            {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
            {"name": "LATER", "value": "$(IP):$(NOT_YET)"},
            {"name": "NOT_YET", "value": "x"},
        ],
        "resources": {"limits": {"memory": "512Mi"}},
        "command": ["serve", "--addr=$(IP)"],
        "args": ["$(TOK)", "$$(TOK)"],
    }  # fmt: skip
    env = resolve_env(POD, container, fetch, "127.0.0.9", "127.0.0.1")
    assert env["mode"] == "fast" and "bad key" not in env
    assert env["S_token"] == "t0k" and env["S_A"] == "from-secret"
    assert env["A"] == "explicit-fast"  # env overrides envFrom; expands earlier vars
    assert env["IP"] == "127.0.0.9" and env["APP"] == "x" and env["TOK"] == "t0k"
    assert "OPT" not in env and env["MEM"] == "512"
    assert env["LATER"] == "127.0.0.9:$(NOT_YET)"  # only earlier variables expand
    assert command_line(container, env) == ["serve", "--addr=127.0.0.9", "t0k", "$(TOK)"]


@pytest.mark.parametrize(
    "ref",
    [
        {"secretKeyRef": {"name": "absent", "key": "k"}},
        {"secretKeyRef": {"name": "sec", "key": "absent"}},
        {"configMapKeyRef": {"name": "absent", "key": "k"}},
    ],
)
def test_missing_required_reference_is_a_config_error(ref: dict) -> None:
    with pytest.raises(EnvError):
        resolve_env(
            POD, {"env": [{"name": "X", "valueFrom": ref}]}, fetch, "127.0.0.9", "127.0.0.1"
        )


def test_quantity() -> None:
    assert quantity("500m") * 2 == 1 and quantity("2Gi") == 2 * 2**30 and quantity("3") == 3


def test_ip_claims_are_unique_across_agents(tmp_path: Path) -> None:
    a, b = IpPool(tmp_path), IpPool(tmp_path)
    first = [a.allocate() for _ in range(2)]
    assert first == ["127.0.0.2", "127.0.0.3"]
    assert b.allocate() == "127.0.0.4"  # another cluster's agent skips claimed IPs
    a.release("127.0.0.2")
    assert b.allocate("127.0.0.2") == "127.0.0.2"  # a pod keeps its reported IP when free


def test_liveness_waits_for_the_real_failure_budget() -> None:
    p = Prober("liveness", {"periodSeconds": 3, "failureThreshold": 2}, started=0.0)
    assert p.interval == 1.0
    for t in (0.0, 1.0, 2.0):
        p.record(False, t)
        assert not p.failed, t  # polled fast, but failing for (2 - 1) x 3 s is needed
    p.record(False, 3.0)
    assert p.failed


def test_readiness_flips_on_thresholds() -> None:
    p = Prober(
        "readiness",
        {"periodSeconds": 10, "initialDelaySeconds": 30, "failureThreshold": 2},
        started=0.0,
    )
    assert p.due(0.0) and p.interval == 1.0  # initial delay ignored, polled every 1 s
    p.record(True, 0.0)
    assert p.ok
    p.record(False, 1.0)
    assert p.ok
    p.record(False, 2.0)
    assert not p.ok
