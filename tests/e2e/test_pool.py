"""InferencePools end to end on the real local control plane (e2e/cluster.py).

The operator is `helm install`ed once for the module and runs as a pod (a local
process with its ServiceAccount's credentials, so RBAC is real); every replica
is a real `python -m engine_pod` process on its own 127.0.0.x address. The tests
drive pools the way a user does: kubectl apply / patch / scale / delete and the
kubectl plugin, then check what a user relies on through the API and the
engines' own endpoints. Synthetic replicas (same endpoints and state machine, no
Paddle) wherever the model's output does not matter; Paddle where it does.

No wall-clock thresholds: every wait polls for a state with a generous timeout.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from e2e.cluster import LocalCluster, tools_dir, wait_until
from e2e.fleet import OPERATOR_NAMESPACE, POOL_RESOURCE, Fleet, Replica
from e2e.load import StreamingLoad

pytestmark = pytest.mark.e2e

SYNTHETIC = {"runner": "synthetic"}
GREEDY_PROMPT = "An RL policy after one more step says"


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fleet(cluster: LocalCluster) -> Iterator[Fleet]:
    """The operator installed once with Helm; a namespace of the module's own for its pools."""
    ns = f"pools-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    wait_until(
        lambda: cluster.get_json("serviceaccount", "default", "-n", ns).get("secrets"),
        timeout=60,
        what=f"the default ServiceAccount of {ns}",
    )
    f = Fleet(cluster, ns)
    f.install_operator()
    yield f
    cluster.kubectl("delete", POOL_RESOURCE, "--all", "-n", ns, "--wait=false", check=False)
    cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new checkpoint of the embedded tiny model (other seed: other weights, same shapes)."""
    out = tmp_path_factory.mktemp("ckpt") / "step-1"
    subprocess.run(
        [sys.executable, "-m", "engine_pod.model.tiny", "--out", str(out), "--seed", "1"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out


@pytest.fixture
def pools(fleet: Fleet) -> Iterator[list[str]]:
    """Names appended here are deleted after the test (without waiting), freeing their replicas."""
    names: list[str] = []
    yield names
    for name in names:
        fleet.try_kubectl("delete", POOL_RESOURCE, name, "-n", fleet.namespace, "--wait=false")


# -- helpers ----------------------------------------------------------------------------------


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:4]}"


def auth(fleet: Fleet, pool: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {fleet.control_token(pool)}"}


def engine_state(rep: Replica, headers: dict[str, str]) -> dict:
    r = httpx.get(rep.url + "/v1/is_paused", headers=headers, timeout=10)
    r.raise_for_status()
    return r.json()


def engine_stats(rep: Replica, headers: dict[str, str]) -> dict:
    r = httpx.get(rep.url + "/v1/stats", headers=headers, timeout=10)
    r.raise_for_status()
    return r.json()


def complete(rep: Replica, max_tokens: int = 8, **extra) -> httpx.Response:
    body = {"prompt": GREEDY_PROMPT, "max_tokens": max_tokens, "ignore_eos": True, **extra}
    return httpx.post(rep.url + "/v1/completions", json=body, timeout=120)


def greedy_tokens(rep: Replica) -> list[int]:
    r = complete(rep, max_tokens=16, temperature=0)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["token_ids"]


def status(fleet: Fleet, pool: str) -> dict:
    return fleet.get(pool).get("status") or {}


def cond(st: dict, ctype: str) -> dict:
    return next((c for c in st.get("conditions", []) if c["type"] == ctype), {})


def rows(st: dict) -> dict[str, dict]:
    return {r["pod"]: r for r in st.get("replicaStatuses", [])}


def create_ready(
    fleet: Fleet, pools: list[str], prefix: str, replicas: int, timeout: float = 180, **kw
) -> tuple[str, list[Replica]]:
    name = unique(prefix)
    pools.append(name)
    kw.setdefault("engine_args", dict(SYNTHETIC))
    fleet.create_pool(name, replicas, **kw)
    return name, fleet.wait_replicas_ready(name, replicas, timeout=timeout)


def wait_paused(fleet: Fleet, pool: str, timeout: float = 120) -> None:
    fleet.wait_condition(pool, "Paused", "True", timeout=timeout, poll=0.25)


def wait_resumed(fleet: Fleet, pool: str, timeout: float = 120) -> None:
    fleet.wait_condition(pool, "Paused", "False", timeout=timeout, poll=0.25)


def wait_synced(fleet: Fleet, pool: str, timeout: float = 120) -> None:
    fleet.wait_condition(pool, "WeightsSynced", "True", timeout=timeout, poll=0.25)


def pod_json(fleet: Fleet, name: str, namespace: str | None = None) -> dict:
    return fleet.cluster.get_json("pod", name, "-n", namespace or fleet.namespace)


def restart_count(pod: dict) -> int:
    return sum(cs.get("restartCount", 0) for cs in pod["status"].get("containerStatuses", []))


def events_of(fleet: Fleet, pool: str, reason: str) -> list[dict]:
    return [e for e in fleet.events(pool) if e.get("reason") == reason]


def exists(fleet: Fleet, kind: str, name: str) -> bool:
    res = fleet.try_kubectl("get", kind, name, "-n", fleet.namespace, "-o", "name")
    if res.returncode == 0:
        return True
    assert "NotFound" in res.stderr, res.stderr
    return False


def operator_pod(fleet: Fleet) -> str:
    pods = fleet.cluster.get_json(
        "pods", "-n", OPERATOR_NAMESPACE, "-l", "app.kubernetes.io/component=operator"
    )["items"]
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    assert len(live) == 1, [p["metadata"]["name"] for p in pods]
    return live[0]["metadata"]["name"]


def on_failure(fleet: Fleet, pool: str) -> str:
    """What to look at when an assertion fails: the pool's status and the operator's log tail."""
    return f"status: {json.dumps(status(fleet, pool), indent=1)}\noperator log:\n{fleet.operator_log()[-4000:]}"


# -- 1. the CRD ---------------------------------------------------------------------------------


# kubectl 1.20 validates against the schema itself first: turn that off so the apiserver answers.
SERVER_VALIDATES = ("create", "--validate=false", "-f", "-")

INVALID_SPECS = [
    ("negative replicas", {"replicas": -1}, ["spec.replicas", "greater than or equal to 0"]),
    ("port out of range", {"port": 70000}, ["spec.port", "less than or equal to 65535"]),
    ("no image", {"image": None}, ["spec.image", "Required value"]),
    ("zero drain timeout", {"pause": {"timeoutSeconds": 0}}, ["spec.pause.timeoutSeconds"]),
    ("weights without a path", {"weights": {"version": "v1"}}, ["spec.weights.path", "Required"]),
    ("paused not a bool", {"paused": "yes"}, ["spec.paused", "boolean"]),
]


def test_crd_is_served_and_invalid_specs_are_rejected_by_the_apiserver(fleet: Fleet) -> None:
    crd = fleet.cluster.get_json("crd", "inferencepools.rlfleet.io")
    established = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert established.get("Established") == "True"
    assert "ipool" in crd["spec"]["names"]["shortNames"]
    version = crd["spec"]["versions"][0]
    assert version["subresources"].get("status") == {}
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    assert {c["name"] for c in version["additionalPrinterColumns"]} >= {
        "Ready",
        "Paused",
        "Weights",
        "Phase",
        "Age",
    }
    # The short name and the full resource name both work (plain `inferencepool` may be ambiguous).
    for resource in ("ipool", POOL_RESOURCE):
        fleet.cluster.kubectl("get", resource, "-n", fleet.namespace)

    # A valid spec is admitted with the schema's defaults (server-side dry run: nothing stored).
    good = fleet.pool_manifest("valid", 1)
    good["spec"] = {"image": "rlfleet/rlfleet:0.1.0"}
    out = fleet.cluster.kubectl(
        "create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(good)
    ).stdout
    spec = json.loads(out)["spec"]
    assert (spec["replicas"], spec["port"], spec["paused"]) == (1, 8180, False)

    for what, change, expected in INVALID_SPECS:
        bad = fleet.pool_manifest(f"bad-{what.replace(' ', '-')}", 1)
        for key, value in change.items():
            if value is None:
                bad["spec"].pop(key)
            else:
                bad["spec"][key] = value
        res = fleet.cluster.kubectl(*SERVER_VALIDATES, input=json.dumps(bad), check=False)
        assert res.returncode != 0, f"{what}: accepted"
        assert "Invalid value" in res.stderr or "Required value" in res.stderr, res.stderr
        for text in expected:
            assert text in res.stderr, f"{what}: {text!r} not in {res.stderr!r}"
        assert not exists(fleet, POOL_RESOURCE, bad["metadata"]["name"])

    no_spec = {k: v for k, v in fleet.pool_manifest("bad-no-spec", 1).items() if k != "spec"}
    res = fleet.cluster.kubectl(*SERVER_VALIDATES, input=json.dumps(no_spec), check=False)
    assert res.returncode != 0 and "spec: Required value" in res.stderr, res.stderr


# -- 2. the demo flow -----------------------------------------------------------------------------


def test_pause_under_load_sync_weights_resume(
    fleet: Fleet, pools: list[str], checkpoint: Path
) -> None:
    """3 Paddle replicas under streaming load: paused with every token accounted for, new
    weights loaded everywhere, resumed serving the new policy."""
    name, reps = create_ready(
        fleet, pools, "rollout", 3, engine_args={"max-num-seqs": 4, "num-kv-blocks": 128}
    )
    pool = fleet.get(name)
    uid = pool["metadata"]["uid"]

    # The children exist and are owned by the pool (deleting it deletes them).
    for kind, child in [
        ("statefulset", name),
        ("service", name),
        ("service", f"{name}-headless"),
        ("configmap", f"{name}-state"),
        ("secret", f"{name}-control-token"),
    ]:
        obj = fleet.cluster.get_json(kind, child, "-n", fleet.namespace)
        owners = obj["metadata"].get("ownerReferences", [])
        assert [(o["kind"], o["name"], o["uid"], o.get("controller")) for o in owners] == [
            ("InferencePool", name, uid, True)
        ], f"{kind}/{child}: {owners}"
    sts = fleet.cluster.get_json("statefulset", name, "-n", fleet.namespace)
    assert sts["spec"]["replicas"] == 3
    args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--max-num-seqs" in args and args[args.index("--max-num-seqs") + 1] == "4"
    st = pool["status"]
    assert st["phase"] == "Running" and st["readyReplicas"] == 3
    assert {r.pod for r in reps} == set(rows(st))

    headers = auth(fleet, name)
    before = {r.pod: greedy_tokens(r) for r in reps}

    # 6 streaming clients per replica: 4 running (max-num-seqs) and 2 waiting on each.
    load = StreamingLoad(reps, clients_per_replica=6, max_tokens=400).start()
    try:
        load.wait_streaming(min_tokens_per_replica=20, timeout=120)
        fleet.patch(name, {"paused": True})
        wait_paused(fleet, name)
    finally:
        report = load.stop()

    st = status(fleet, name)
    last = st["lastPause"]
    by = report.by_outcome()
    failed = [r for r in report.records if r.outcome == "failed"]
    assert not failed, [f"{r.replica}: {r.detail}" for r in failed]
    assert (
        sum(by.values()) == len(report.records) == by["completed"] + by["aborted"] + by["refused"]
    )
    assert by["aborted"] >= 1, by
    assert all(r.finish_reason == "abort" for r in report.records if r.outcome == "aborted")
    # Every token a client received from an aborted request is the operator's partialTokens.
    assert last["partialTokens"] == report.tokens("aborted"), (last, by)
    assert last["abortedRequests"] == by["aborted"], (last, by)
    assert (last["replicas"], last["pausedReplicas"], last["failedReplicas"]) == (3, 3, 0)
    assert last["completedAt"] and last["freedBlocks"] > 0
    assert sorted(p["pod"] for p in last["perReplica"]) == sorted(r.pod for r in reps)
    assert sum(p["partialTokens"] for p in last["perReplica"]) == last["partialTokens"]
    assert st["phase"] == "Paused" and st["pausedReplicas"] == 3
    for rep in reps:
        assert engine_state(rep, headers)["is_paused"] is True
        assert engine_state(rep, headers)["state"] == "paused"
        assert engine_stats(rep, headers)["kv_used_blocks"] == 0
        refused = complete(rep)
        assert refused.status_code == 503
        assert refused.json()["error"]["type"] == "engine_paused"
    wait_until(lambda: events_of(fleet, name, "Paused"), 30, "a Paused Event")
    token = headers["Authorization"].split()[1]
    assert token not in fleet.operator_log()
    assert not [e for e in fleet.events(name) if token in e.get("message", "")]

    # New weights while paused.
    fleet.patch(name, {"weights": {"version": "step-1", "path": str(checkpoint)}})
    wait_synced(fleet, name)
    st = status(fleet, name)
    assert st["weightsVersion"] == "step-1"
    assert {r["weightsVersion"] for r in st["replicaStatuses"]} == {"step-1"}
    for rep in reps:
        assert engine_state(rep, headers)["weights_version"] == "step-1"
    state_cm = fleet.cluster.get_json("configmap", f"{name}-state", "-n", fleet.namespace)
    assert state_cm["data"]["weightsVersion"] == "step-1"

    fleet.patch(name, {"paused": False})
    wait_resumed(fleet, name)
    st = status(fleet, name)
    assert st["phase"] == "Running", on_failure(fleet, name)
    for rep in reps:
        assert engine_state(rep, headers)["state"] == "running"
        after = greedy_tokens(rep)
        assert after != before[rep.pod], f"{rep.pod}: same greedy output after the weight sync"


# -- 3. a replica dies mid-pause ------------------------------------------------------------------


def test_replica_hung_then_killed_mid_pause(
    fleet: Fleet, pools: list[str], checkpoint: Path
) -> None:
    """A hung replica is reported (Degraded, the pod named, an Event) while the others pause;
    killed, it restarts paused with the pool's weights and the pool converges."""
    name, reps = create_ready(fleet, pools, "hung", 3)
    headers = auth(fleet, name)
    victim, others = reps[1], [reps[0], reps[2]]
    fleet.cluster.kill_pod(fleet.namespace, victim.pod, "STOP")  # hung: alive, not answering
    try:
        fleet.patch(
            name,
            {"paused": True, "weights": {"version": "step-1", "path": str(checkpoint)}},
        )

        def reported() -> dict | None:
            st = status(fleet, name)
            row = rows(st).get(victim.pod, {})
            paused = cond(st, "Paused")
            ok = (
                st.get("phase") == "Degraded"
                and row.get("state") == "Unreachable"
                and paused.get("status") == "False"
                and victim.pod in paused.get("message", "")
                and all(rows(st).get(o.pod, {}).get("state") == "Paused" for o in others)
            )
            return st if ok else None

        st = wait_until(reported, 120, f"{victim.pod} reported unreachable, the others paused")
        # The others were not held up by the hung replica: paused, new weights loaded.
        for rep in others:
            state = engine_state(rep, headers)
            assert (state["state"], state["weights_version"]) == ("paused", "step-1")
            assert rows(st)[rep.pod]["weightsVersion"] == "step-1"
        assert st["pausedReplicas"] == 2
        wait_until(
            lambda: any(
                victim.pod in e.get("message", "")
                for e in events_of(fleet, name, "ReplicaUnreachable")
            ),
            30,
            "a ReplicaUnreachable Event naming the pod",
        )
    finally:
        fleet.cluster.kill_pod(fleet.namespace, victim.pod, "KILL")

    # Restarted by the node agent, it starts paused with the pool's weights.
    wait_until(
        lambda: restart_count(pod_json(fleet, victim.pod)) >= 1, 60, f"{victim.pod} restarted"
    )
    wait_paused(fleet, name)
    wait_synced(fleet, name)

    def converged() -> dict | None:
        st = status(fleet, name)
        ok = st.get("phase") == "Paused" and st.get("pausedReplicas") == 3
        return st if ok else None

    st = wait_until(converged, 120, "the pool Paused with 3 paused replicas")
    assert {r["state"] for r in st["replicaStatuses"]} == {"Paused"}, st["replicaStatuses"]
    assert st["weightsVersion"] == "step-1"
    restarted = fleet.replicas(name)[1]
    assert restarted.pod == victim.pod
    state = engine_state(restarted, headers)
    assert (state["state"], state["weights_version"]) == ("paused", "step-1"), state
    assert complete(restarted).status_code == 503
    # The restarted engine was told at start: paused, these weights (never served the old ones).
    log = fleet.cluster.pod_log(fleet.namespace, victim.pod)
    assert log.count("=== ") >= 2, log[-2000:]

    fleet.patch(name, {"paused": False})
    wait_resumed(fleet, name)
    for rep in fleet.replicas(name):
        assert complete(rep).status_code == 200


# -- 4. the operator restarts mid-sequence --------------------------------------------------------


def test_operator_restarted_mid_sequence_completes_it(
    fleet: Fleet, pools: list[str], checkpoint: Path
) -> None:
    """The operator is killed while a pause + weight sync fans out; the restarted one finishes."""
    # A slow forward step (4 s) under load: the pause waits for the step in flight, which
    # leaves the operator in the middle of its fan-out when it is killed.
    name, reps = create_ready(
        fleet, pools, "oprestart", 3, engine_args={**SYNTHETIC, "debug-step-delay-ms": 4000}
    )
    headers = auth(fleet, name)
    load = StreamingLoad(reps, clients_per_replica=2, max_tokens=400).start()
    try:
        load.wait_streaming(min_tokens_per_replica=1, timeout=60)
        old_pod = operator_pod(fleet)
        restarts = restart_count(pod_json(fleet, old_pod, OPERATOR_NAMESPACE))
        generation = fleet.get(name)["metadata"]["generation"]
        fleet.patch(
            name,
            {"paused": True, "weights": {"version": "step-1", "path": str(checkpoint)}},
        )
        with fleet.cluster.api() as api:
            path = f"/apis/rlfleet.io/v1alpha1/namespaces/{fleet.namespace}/inferencepools/{name}"

            def pausing() -> bool:
                st = api.get(path).get("status") or {}
                return st.get("phase") == "Pausing" and st.get("observedGeneration", 0) > generation

            wait_until(pausing, 60, "phase Pausing", interval=0.02)
            fleet.cluster.kill_pod(OPERATOR_NAMESPACE, old_pod, "KILL")
            # What the dead operator left in status: a pause started, maybe not finished.
            interrupted = not (api.get(path)["status"].get("lastPause") or {}).get("completedAt")

        wait_until(
            lambda: restart_count(pod_json(fleet, old_pod, OPERATOR_NAMESPACE)) > restarts,
            60,
            "the operator restarted by the node agent",
        )
        wait_paused(fleet, name, timeout=180)
        wait_synced(fleet, name, timeout=180)
    finally:
        report = load.stop()

    st = status(fleet, name)
    assert st["phase"] == "Paused", on_failure(fleet, name)
    last = st["lastPause"]
    assert last["completedAt"], last
    if interrupted:
        assert last.get("resumedAfterRestart") is True, last
    for rep in reps:
        state = engine_state(rep, headers)
        assert (state["state"], state["weights_version"]) == ("paused", "step-1"), state
        assert engine_stats(rep, headers)["kv_used_blocks"] == 0
    assert not [r for r in report.records if r.outcome == "failed"], report.by_outcome()
    assert "rlfleet operator started" in fleet.cluster.pod_log(OPERATOR_NAMESPACE, old_pod)

    fleet.patch(name, {"paused": False})
    wait_resumed(fleet, name, timeout=180)
    assert {engine_state(r, headers)["state"] for r in reps} == {"running"}


# -- 5. scale up while paused ---------------------------------------------------------------------


def test_scale_up_while_paused_starts_the_new_replica_paused_with_the_pools_weights(
    fleet: Fleet, pools: list[str], checkpoint: Path
) -> None:
    name, _ = create_ready(fleet, pools, "scale", 2)
    fleet.patch(name, {"paused": True, "weights": {"version": "step-1", "path": str(checkpoint)}})
    # What a user runs (SPEC.md): kubectl wait on the conditions.
    fleet.kubectl_wait(name, "Paused")
    fleet.kubectl_wait(name, "WeightsSynced")
    wait_paused(fleet, name)  # ...and current for this generation
    wait_synced(fleet, name)

    fleet.cluster.kubectl("scale", "ipool", name, "-n", fleet.namespace, "--replicas=3")
    assert fleet.get(name)["spec"]["replicas"] == 3

    def three_paused() -> dict | None:
        st = status(fleet, name)
        states = {r["state"] for r in st.get("replicaStatuses", [])}
        ok = (
            st.get("readyReplicas") == 3
            and st.get("pausedReplicas") == 3
            and states == {"Paused"}
            and cond(st, "Paused").get("status") == "True"
            and cond(st, "WeightsSynced").get("status") == "True"
        )
        return st if ok else None

    st = wait_until(three_paused, 120, "3 ready, paused replicas")
    assert st["weightsVersion"] == "step-1"
    reps = fleet.replicas(name)
    new = next(r for r in reps if r.pod == f"{name}-2")
    state = engine_state(new, auth(fleet, name))
    assert (state["state"], state["weights_version"]) == ("paused", "step-1"), state
    assert complete(new).status_code == 503
    sts = fleet.cluster.get_json("statefulset", name, "-n", fleet.namespace)
    assert sts["spec"]["replicas"] == 3
    # It never served: it was not resumed by anyone, it started paused.
    assert engine_stats(new, auth(fleet, name))["requests_accepted"] == 0


# -- 6. pools are independent ---------------------------------------------------------------------


def test_pool_created_while_another_is_paused_serves(fleet: Fleet, pools: list[str]) -> None:
    paused, paused_reps = create_ready(fleet, pools, "frozen", 1, paused=True)
    wait_paused(fleet, paused)
    assert engine_state(paused_reps[0], auth(fleet, paused))["state"] == "paused"

    name, reps = create_ready(fleet, pools, "fresh", 2)
    st = status(fleet, name)
    assert st["phase"] == "Running"
    assert (cond(st, "Paused")["status"], cond(st, "Paused")["reason"]) == ("False", "Running")
    for rep in reps:
        r = complete(rep, max_tokens=5)
        assert r.status_code == 200, r.text
        assert len(r.json()["choices"][0]["token_ids"]) == 5
    # ...and the paused one is still paused.
    assert status(fleet, paused)["phase"] == "Paused"
    assert complete(paused_reps[0]).status_code == 503
    # The printer columns tell them apart at a glance.
    table = fleet.cluster.kubectl("get", "ipool", paused, name, "-n", fleet.namespace).stdout
    header, *lines = table.split("\n")
    assert header.split() == ["NAME", "READY", "PAUSED", "WEIGHTS", "PHASE", "AGE"]
    got = {line.split()[0]: line.split()[1:5] for line in lines if line.strip()}
    assert got == {
        paused: ["1/1", "true", "base", "Paused"],
        name: ["2/2", "false", "base", "Running"],
    }


# -- a pool that cannot start says why -------------------------------------------------------------


def test_pool_whose_pods_cannot_start_says_why(fleet: Fleet, pools: list[str]) -> None:
    # An engine flag it cannot parse: the process exits at once, the node agent backs off.
    name = unique("broken")
    pools.append(name)
    fleet.create_pool(name, 1, engine_args={**SYNTHETIC, "max-num-seqs": "lots"})

    pod = f"{name}-0"

    def says_why() -> dict | None:
        st = status(fleet, name)
        ready = cond(st, "Ready")
        ok = (
            st.get("phase") == "Degraded"
            and ready.get("status") == "False"
            and pod in ready.get("message", "")
            and "exit code 2" in ready.get("message", "")
        )
        return st if ok else None

    st = wait_until(says_why, 90, "Degraded, naming the pod and its exit code")
    assert "exit code 2" in rows(st)[pod].get("message", "")
    assert "invalid int value" in fleet.cluster.pod_log(fleet.namespace, pod)
    # It stays Degraded through its restarts (back-off, start, crash): it never looks healthy.
    restarts = restart_count(pod_json(fleet, name=pod))
    seen: set[str] = set()
    deadline = time.monotonic() + 90
    while restart_count(pod_json(fleet, name=pod)) < restarts + 2:
        assert time.monotonic() < deadline, "the node agent stopped restarting the pod"
        seen.add(status(fleet, name)["phase"])
        time.sleep(0.2)
    assert seen == {"Degraded"}, seen


def test_missing_control_token_secret_is_reported_then_recovers(
    fleet: Fleet, pools: list[str]
) -> None:
    name = unique("tokenless")
    pools.append(name)
    manifest = fleet.pool_manifest(name, 1, engine_args=dict(SYNTHETIC))
    manifest["spec"]["controlTokenSecret"] = f"{name}-mine"
    fleet.cluster.apply(manifest)

    def reported() -> dict | None:
        st = status(fleet, name)
        ready = cond(st, "Ready")
        ok = st.get("phase") == "Degraded" and ready.get("reason") == "ControlTokenMissing"
        return st if ok else None

    st = wait_until(reported, 60, "Ready=False ControlTokenMissing")
    assert f"{name}-mine" in cond(st, "Ready")["message"]
    # The user creates it: the pod starts (its env resolves) and the pool converges.
    fleet.cluster.kubectl(
        "create", "secret", "generic", f"{name}-mine", "-n", fleet.namespace,
        "--from-literal=token=user-chosen-token",
    )  # fmt: skip
    reps = fleet.wait_replicas_ready(name, 1, timeout=120)
    assert fleet.control_token(name) == "user-chosen-token"
    fleet.patch(name, {"paused": True})
    wait_paused(fleet, name)
    state = engine_state(reps[0], {"Authorization": "Bearer user-chosen-token"})
    assert state["state"] == "paused"
    assert httpx.get(reps[0].url + "/v1/is_paused", timeout=10).status_code == 401


# -- 7. delete ------------------------------------------------------------------------------------


def test_delete_pool_removes_its_children(fleet: Fleet, pools: list[str]) -> None:
    name, reps = create_ready(fleet, pools, "doomed", 2)
    children = [
        ("statefulset", name),
        ("service", name),
        ("service", f"{name}-headless"),
        ("configmap", f"{name}-state"),
        ("secret", f"{name}-control-token"),
        *[("pod", r.pod) for r in reps],
    ]
    assert all(exists(fleet, kind, child) for kind, child in children)

    fleet.delete_pool(name, wait=True)
    assert not exists(fleet, POOL_RESOURCE, name)
    wait_until(
        lambda: not any(exists(fleet, kind, child) for kind, child in children),
        120,
        "every child of the pool garbage-collected",
    )
    wait_until(
        lambda: (
            not [
                p
                for p in fleet.cluster.local_pods()
                if p["namespace"] == fleet.namespace and p["name"].startswith(f"{name}-")
            ]
        ),
        60,
        "the replicas' processes stopped",
    )
    for rep in reps:
        with pytest.raises(httpx.TransportError):
            httpx.get(rep.url + "/health", timeout=2)


# -- 8. the kubectl plugin ------------------------------------------------------------------------


def plugin(cluster: LocalCluster, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """`kubectl inferencepool ARGS` as a user runs it: kubectl finds the plugin on PATH."""
    env = cluster.env()
    if shutil.which("kubectl-inferencepool", path=env["PATH"]):
        argv = [str(tools_dir() / "kubectl"), "inferencepool", *args]
    else:  # not installed as a console script: the same entry point
        argv = [sys.executable, "-m", "rlfleet_operator.plugin", *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)


def test_kubectl_plugin_pause_wait_and_resume(fleet: Fleet, pools: list[str]) -> None:
    name, reps = create_ready(fleet, pools, "plugin", 2)
    headers = auth(fleet, name)
    ns = ["-n", fleet.namespace]

    res = plugin(fleet.cluster, *ns, "pause", name, "--wait", "--timeout", "120")
    assert res.returncode == 0, res.stdout + res.stderr
    st = status(fleet, name)
    assert cond(st, "Paused")["status"] == "True" and st["phase"] == "Paused"
    assert cond(st, "Paused")["observedGeneration"] == fleet.get(name)["metadata"]["generation"]
    assert {engine_state(r, headers)["state"] for r in reps} == {"paused"}

    res = plugin(fleet.cluster, *ns, "status", name)
    assert res.returncode == 0 and all(r.pod in res.stdout for r in reps), res.stdout

    res = plugin(fleet.cluster, *ns, "resume", name, "--wait", "--timeout", "120")
    assert res.returncode == 0, res.stdout + res.stderr
    assert status(fleet, name)["phase"] == "Running"
    assert {engine_state(r, headers)["state"] for r in reps} == {"running"}
    assert all(complete(r).status_code == 200 for r in reps)

    # A pool that does not exist: an error, not a hang.
    res = plugin(fleet.cluster, *ns, "pause", "no-such-pool", "--wait", "--timeout", "5")
    assert res.returncode != 0


# -- 11. the RL loop: retract, a digest-checked weight transaction, resume ---------------------------


def test_rl_loop_retract_pause_sync_resume_loses_no_stream(
    fleet: Fleet, pools: list[str], checkpoint: Path
) -> None:
    """spec.pause.mode retract: streams cut by the pause continue after the sync, none aborted or lost."""
    from engine_pod.model.digest import verify_checkpoint

    name, reps = create_ready(
        fleet,
        pools,
        "rl",
        3,
        engine_args={**SYNTHETIC, "synthetic-step-ms": 20},
        pause_mode="retract",
    )
    headers = auth(fleet, name)
    load = StreamingLoad(reps, clients_per_replica=3, max_tokens=60).start()
    load.wait_streaming(min_tokens_per_replica=10)
    fleet.patch(name, {"paused": True})
    wait_paused(fleet, name)
    last = status(fleet, name)["lastPause"]
    assert last["abortedRequests"] == 0, on_failure(fleet, name)
    for rep in reps:
        st = engine_state(rep, headers)
        assert st["is_paused"] and st["mode"] == "retract"
        assert engine_stats(rep, headers)["kv_used_blocks"] == 0

    digest = verify_checkpoint(str(checkpoint))
    wrong = "0" * 64
    fleet.patch(name, {"weights": {"version": "step-1", "path": str(checkpoint), "digest": wrong}})
    wait_until(
        lambda: cond(status(fleet, name), "WeightsSynced").get("reason") == "SyncFailed",
        timeout=120,
        what="WeightsSynced=False (SyncFailed) for a digest mismatch",
    )
    assert all(engine_state(r, headers)["weights_version"] != "step-1" for r in reps)
    fleet.patch(name, {"weights": {"version": "step-1", "path": str(checkpoint), "digest": digest}})
    wait_synced(fleet, name)
    for rep in reps:
        st = engine_state(rep, headers)
        assert (st["weights_version"], st["weights_digest"]) == ("step-1", digest)
    wait_until(
        lambda: status(fleet, name).get("weightsDigest") == digest,
        timeout=60,
        what="status.weightsDigest: one digest across the pool",
    )
    by_pod = rows(status(fleet, name))
    for row in by_pod.values():
        assert (row["weightsDigest"], row["pauseMode"]) == (digest, "retract"), row
    # Per replica: the streams the pause retracted (they continue after resume), none kept.
    for rep in reps:
        st = engine_state(rep, headers)
        row = by_pod[rep.pod]
        assert (row["retractedRequests"], row["keptRequests"]) == (st["retracted"], 0), row
    assert sum(r["retractedRequests"] for r in by_pod.values()) > 0

    fleet.patch(name, {"paused": False})
    wait_resumed(fleet, name)
    report = load.stop()
    by = report.by_outcome()
    assert by["aborted"] == 0 and by["failed"] == 0, [
        r.detail for r in report.records if r.outcome == "failed"
    ]
    done = [r for r in report.records if r.outcome == "completed"]
    assert done and all(
        r.tokens == 60 for r in done
    )  # every stream got all its tokens, across the sync


# -- 11b. a weights change is a transaction: Fence and Rollback ---------------------------------------


def pod_root(fleet: Fleet, pod: str) -> Path:
    """The pod's own working directory on the node (e2e/node_agent.py: its filesystem)."""
    found = [
        p
        for p in fleet.cluster.local_pods()
        if (p["namespace"], p["name"]) == (fleet.namespace, pod)
    ]
    assert len(found) == 1, found
    return Path(found[0]["root"])


def place_checkpoint(fleet: Fleet, pod: str, rel: str, checkpoint: Path) -> None:
    """The checkpoint reaches `rel` in the pod's own filesystem (as a node-local copy would)."""
    dest = pod_root(fleet, pod) / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(checkpoint, dest)


def serving_addresses(fleet: Fleet, pool: str) -> set[str]:
    """Ready addresses of the pool's client Service, from its EndpointSlices (what a proxy or
    gateway routes to; v1 Endpoints refuse loopback addresses on this cluster)."""
    slices = fleet.cluster.get_json(
        "endpointslices", "-n", fleet.namespace, "-l", f"kubernetes.io/service-name={pool}"
    )["items"]
    return {
        addr
        for s in slices
        for ep in s.get("endpoints") or ()
        if (ep.get("conditions") or {}).get("ready", True)
        for addr in ep.get("addresses") or ()
    }


def serving_label(fleet: Fleet, pod: str) -> str | None:
    return pod_json(fleet, pod)["metadata"].get("labels", {}).get("rlfleet.io/serving")


def new_checkpoint(tmp_path: Path, name: str, seed: int) -> Path:
    out = tmp_path / name
    subprocess.run(
        [sys.executable, "-m", "engine_pod.model.tiny", "--out", str(out), "--seed", str(seed)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out


def test_rl_loop_replica_missing_the_checkpoint_is_fenced_then_serves_again(
    fleet: Fleet, pools: list[str], checkpoint: Path
) -> None:
    """failurePolicy Fence (default): the replica whose node lacks the checkpoint leaves the
    Service while the others serve the new weights; once the checkpoint reaches it, the retry
    loads it and the replica serves again. No stream of the RL loop is lost, not even its own."""
    from engine_pod.model.digest import verify_checkpoint

    name, reps = create_ready(
        fleet,
        pools,
        "fence",
        3,
        engine_args={**SYNTHETIC, "synthetic-step-ms": 20},
        pause_mode="retract",
    )
    headers = auth(fleet, name)
    every = {r.ip for r in reps}
    wait_until(
        lambda: serving_addresses(fleet, name) == every,
        timeout=60,
        what="every replica in the client Service's EndpointSlice",
    )
    bad, good = reps[2], reps[:2]
    rel = "ckpt/step-1"  # node-local checkpoint path, relative to each pod's own filesystem
    for rep in good:
        place_checkpoint(fleet, rep.pod, rel, checkpoint)
    digest = verify_checkpoint(str(checkpoint))

    load = StreamingLoad(reps, clients_per_replica=2, max_tokens=60).start()
    load.wait_streaming(min_tokens_per_replica=10)
    fleet.patch(name, {"paused": True})
    wait_paused(fleet, name)
    fleet.patch(name, {"weights": {"version": "step-1", "path": rel, "digest": digest}})
    wait_synced(fleet, name)
    st = status(fleet, name)
    synced = cond(st, "WeightsSynced")
    assert synced["reason"] == "ReplicasFenced" and bad.pod in synced["message"], on_failure(
        fleet, name
    )
    row = rows(st)[bad.pod]
    assert row["fenced"] is True and "step-1" not in row.get("weightsVersion", ""), row
    assert serving_label(fleet, bad.pod) == "false"
    good_ips = {r.ip for r in good}
    wait_until(
        lambda: serving_addresses(fleet, name) == good_ips,
        timeout=60,
        what=f"{bad.pod}'s address gone from the EndpointSlice",
    )
    assert events_of(fleet, name, "ReplicaFenced")

    fleet.patch(name, {"paused": False})
    wait_resumed(fleet, name)
    for rep in good:
        s = engine_state(rep, headers)
        assert (s["state"], s["weights_version"], s["weights_digest"]) == (
            "running",
            "step-1",
            digest,
        )
        assert complete(rep).status_code == 200
    s = engine_state(bad, headers)
    assert s["state"] == "paused" and s["weights_version"] != "step-1", s  # never serves stale
    assert complete(bad).status_code == 503
    assert serving_addresses(fleet, name) == good_ips

    place_checkpoint(fleet, bad.pod, rel, checkpoint)  # the copy reaches the third node
    wait_until(
        lambda: serving_addresses(fleet, name) == every,
        timeout=180,
        what=f"{bad.pod} back in the EndpointSlice after a good retry",
    )
    s = engine_state(bad, headers)
    assert (s["state"], s["weights_version"], s["weights_digest"]) == ("running", "step-1", digest)
    assert serving_label(fleet, bad.pod) == "true"
    wait_until(
        lambda: cond(status(fleet, name), "WeightsSynced").get("reason") == "AllReplicasSynced",
        timeout=60,
        what="WeightsSynced AllReplicasSynced once nothing is fenced",
    )
    assert status(fleet, name)["fencedReplicas"] == 0

    report = load.stop()
    by = report.by_outcome()
    assert by["aborted"] == 0 and by["failed"] == 0, [
        r.detail for r in report.records if r.outcome == "failed"
    ]
    done = [r for r in report.records if r.outcome == "completed"]
    assert {r.replica for r in done} == {r.pod for r in reps}
    assert all(r.tokens == 60 for r in done)  # the fenced replica's streams continued too


def test_rollback_pool_restores_the_committed_weights_on_every_replica(
    fleet: Fleet, pools: list[str], checkpoint: Path, tmp_path: Path
) -> None:
    """failurePolicy Rollback: one replica cannot load step-2, so every replica goes back to
    step-1 (the committed weights) and the pool says why; it resumes on step-1 everywhere."""
    from engine_pod.model.digest import verify_checkpoint

    name, reps = create_ready(fleet, pools, "rollback", 2)
    headers = auth(fleet, name)
    digest1 = verify_checkpoint(str(checkpoint))
    step1 = {"version": "step-1", "path": str(checkpoint), "failurePolicy": "Rollback"}
    fleet.patch(name, {"paused": True, "weights": step1})
    wait_synced(fleet, name)
    wait_until(
        lambda: (status(fleet, name).get("committedWeights") or {}).get("version") == "step-1",
        timeout=60,
        what="status.committedWeights step-1",
    )

    step2 = new_checkpoint(tmp_path, "step-2", seed=2)
    rel = "ckpt/step-2"
    place_checkpoint(fleet, reps[0].pod, rel, step2)  # reps[1]'s node never gets it
    fleet.patch(name, {"weights": {**step1, "version": "step-2", "path": rel}})
    wait_until(
        lambda: cond(status(fleet, name), "WeightsSynced").get("reason") == "RolledBack",
        timeout=120,
        what="WeightsSynced=False (RolledBack)",
    )
    wait_until(
        lambda: all(engine_state(r, headers)["weights_version"] == "step-1" for r in reps),
        timeout=120,
        what="every replica back on step-1",
    )
    for rep in reps:
        s = engine_state(rep, headers)
        assert (s["weights_digest"], s["weights_path"]) == (digest1, str(checkpoint)), s
    st = status(fleet, name)
    rollback = st["rollback"]
    assert (rollback["failedVersion"], rollback["restoredVersion"]) == ("step-2", "step-1")
    assert reps[1].pod in rollback["reason"] and reps[1].pod in cond(st, "WeightsSynced")["message"]
    state = fleet.cluster.get_json("configmap", f"{name}-state", "-n", fleet.namespace)
    assert state["data"]["weightsVersion"] == "step-1"  # a restarted pod starts on step-1 too
    assert events_of(fleet, name, "RollingBack")

    fleet.patch(name, {"paused": False})
    wait_resumed(fleet, name)
    for rep in reps:
        s = engine_state(rep, headers)
        assert (s["state"], s["weights_version"]) == ("running", "step-1"), s
        assert complete(rep).status_code == 200
    assert status(fleet, name)["weightsDigest"] == digest1


# -- 12. helm test ----------------------------------------------------------------------------------


def test_helm_test_hook_passes(fleet: Fleet) -> None:
    """`helm test` runs the chart's test pod (as the operator's ServiceAccount): the CRD is established."""
    res = fleet.cluster.helm("test", "rlfleet", "-n", OPERATOR_NAMESPACE, "--timeout", "120s")
    assert "Succeeded" in res.stdout, res.stdout
