"""The local control plane and node agent, for real: pods as processes on
127.0.0.x, env resolution, probes, restarts, deletion, CRDs, helm, RBAC."""

from __future__ import annotations

import os
import socket
import subprocess
import textwrap
import time
from pathlib import Path

import httpx

from e2e.cluster import NODE_NAME, LocalCluster, tools_dir, wait_until


def _wildcard_free_port() -> int:
    """Pods share the host's network namespace: a host process listening on
    0.0.0.0:P blocks P on every pod IP, so pick a port free on all addresses."""
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


WEB_PORT = _wildcard_free_port()
ECHO_PORT = _wildcard_free_port()

# A tiny server that reports its environment, argv and cwd on GET /env.
ECHO = textwrap.dedent(
    """
    import http.server, json, os, sys
    port, ip = int(sys.argv[1]), sys.argv[2]
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"env": dict(os.environ), "argv": sys.argv[1:], "cwd": os.getcwd()}).encode()
            self.send_response(200 if self.path in ("/env", "/healthz") else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
    http.server.ThreadingHTTPServer((ip, port), H).serve_forever()
    """
)


def web_statefulset(name: str, replicas: int = 2) -> dict:
    """`python -m http.server $(PORT) --bind $(POD_IP)` with a readiness probe."""
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 3,
                    "containers": [
                        {
                            "name": "web",
                            "image": "python:3.11-slim",
                            "command": [
                                "python",
                                "-m",
                                "http.server",
                                "$(PORT)",
                                "--bind",
                                "$(POD_IP)",
                            ],
                            "env": [
                                {"name": "PORT", "value": str(WEB_PORT)},
                                {
                                    "name": "POD_IP",
                                    "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
                                },
                            ],
                            "ports": [{"name": "http", "containerPort": WEB_PORT}],
                            "readinessProbe": {
                                "httpGet": {"path": "/", "port": "http"},
                                "periodSeconds": 5,
                            },
                        }
                    ],
                },
            },
        },
    }


def pods(cluster: LocalCluster, ns: str, selector: str) -> list[dict]:
    return cluster.get_json("pods", "-n", ns, "-l", selector)["items"]


def is_ready(pod: dict) -> bool:
    conds = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)


def restart_count(pod: dict) -> int:
    return pod["status"].get("containerStatuses", [{}])[0].get("restartCount", 0)


def wait_ready(
    cluster: LocalCluster, ns: str, selector: str, count: int, timeout: float = 60
) -> list[dict]:
    return wait_until(
        lambda: (
            (ps := pods(cluster, ns, selector))
            and len(ps) == count
            and all(map(is_ready, ps))
            and ps
        ),
        timeout=timeout,
        what=f"{count} ready pod(s) {selector} in {ns}",
    )


def local_pid(cluster: LocalCluster, ns: str, name: str) -> int | None:
    return next(
        (p["pid"] for p in cluster.local_pods() if p["namespace"] == ns and p["name"] == name), None
    )


def pid_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def test_apiserver_answers(cluster: LocalCluster) -> None:
    assert cluster.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    with cluster.api() as api:
        version = api.get("/version")
    assert version["gitVersion"] == "v1.20.2"
    node = cluster.get_json("node", NODE_NAME)
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert {"type": "InternalIP", "address": "127.0.0.1"} in node["status"]["addresses"]
    assert not any(t["effect"] == "NoSchedule" for t in node["spec"].get("taints", []))


def test_statefulset_pods_run_ready_on_their_own_loopback_ip(
    cluster: LocalCluster, namespace: str
) -> None:
    t0 = time.monotonic()
    cluster.apply({**web_statefulset("web"), "metadata": {"name": "web", "namespace": namespace}})
    ready = wait_ready(cluster, namespace, "app=web", 2)
    print(f"2 StatefulSet pods Ready in {time.monotonic() - t0:.1f}s")
    ips = [p["status"]["podIP"] for p in ready]
    assert len(set(ips)) == 2 and all(ip.startswith("127.0.") for ip in ips)
    for pod in ready:
        st = pod["status"]
        assert st["phase"] == "Running" and st["hostIP"] == "127.0.0.1"
        assert st["containerStatuses"][0]["state"].keys() == {"running"}
        # Both serve the same port: possible only because each binds its own IP.
        r = httpx.get(f"http://{st['podIP']}:{WEB_PORT}/", timeout=5)
        assert r.status_code == 200


def test_env_from_secret_and_configmap_reaches_the_process(
    cluster: LocalCluster, namespace: str
) -> None:
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": namespace},
          "data": {"mode": "fast", "level": "3"}}  # fmt: skip
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds", "namespace": namespace},
              "stringData": {"token": "s3cret", "USER_NAME": "alice"}}  # fmt: skip
    container = {
        "name": "echo",
        "image": "ignored",
        "command": ["python", "-c", ECHO],
        "args": ["$(PORT)", "$(POD_IP)", "$$(PORT)", "$(UNDEFINED)"],
        "envFrom": [
            {"configMapRef": {"name": "cfg"}, "prefix": "CFG_"},
            {"secretRef": {"name": "creds"}},
        ],
        "env": [
            {"name": "PORT", "value": str(ECHO_PORT)},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {
                "name": "POD_NAMESPACE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            },
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "URL", "value": "http://$(POD_IP):$(PORT)/"},
            {"name": "API_TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
            {
                "name": "NOKEY",
                "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "nope", "optional": True}},
            },
            {
                "name": "NOSECRET",
                "valueFrom": {"secretKeyRef": {"name": "absent", "key": "x", "optional": True}},
            },
        ],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": ECHO_PORT}},
    }
    deploy = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "echo", "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "echo"}},
            "template": {
                "metadata": {"labels": {"app": "echo"}},
                "spec": {"serviceAccountName": "reader", "containers": [container]},
            },
        },
    }
    sa = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "reader", "namespace": namespace},
    }
    cluster.apply([cm, secret, sa, deploy])
    (pod,) = wait_ready(cluster, namespace, "app=echo", 1)
    ip = pod["status"]["podIP"]
    got = httpx.get(f"http://{ip}:{ECHO_PORT}/env", timeout=5).json()
    env = got["env"]
    assert got["argv"] == [str(ECHO_PORT), ip, "$(PORT)", "$(UNDEFINED)"]
    assert env["API_TOKEN"] == "s3cret" and env["USER_NAME"] == "alice" and env["token"] == "s3cret"
    assert env["MODE"] == "fast" and env["CFG_mode"] == "fast" and env["CFG_level"] == "3"
    assert env["POD_NAME"] == pod["metadata"]["name"] == env["HOSTNAME"]
    assert env["POD_NAMESPACE"] == namespace and env["NODE"] == NODE_NAME
    assert env["URL"] == f"http://{ip}:{ECHO_PORT}/"
    assert "NOKEY" not in env and "NOSECRET" not in env

    # The pod's KUBECONFIG authenticates as its ServiceAccount: RBAC applies.
    def pod_kubectl(*args: str) -> subprocess.CompletedProcess:
        argv = [str(tools_dir() / "kubectl"), "--kubeconfig", env["KUBECONFIG"], *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30)

    assert pod_kubectl("auth", "can-i", "list", "pods").stdout.strip() == "no"
    assert "Forbidden" in pod_kubectl("get", "pods").stderr
    cluster.kubectl(
        "create", "role", "pod-reader", "-n", namespace, "--verb=get,list", "--resource=pods"
    )
    cluster.kubectl("create", "rolebinding", "reader", "-n", namespace, "--role=pod-reader",
                    f"--serviceaccount={namespace}:reader")  # fmt: skip
    wait_until(
        lambda: pod_kubectl("auth", "can-i", "list", "pods").stdout.strip() == "yes",
        10,
        "RBAC grant",
    )
    assert pod["metadata"]["name"] in pod_kubectl("get", "pods", "-o", "name").stdout


def test_killed_process_is_restarted(cluster: LocalCluster, namespace: str) -> None:
    cluster.apply(
        {**web_statefulset("web", replicas=1), "metadata": {"name": "web", "namespace": namespace}}
    )
    (pod,) = wait_ready(cluster, namespace, "app=web", 1)
    old_pid = local_pid(cluster, namespace, "web-0")
    assert old_pid and pid_alive(old_pid)
    cluster.kill_pod(namespace, "web-0")
    pod = wait_until(
        lambda: (
            (p := pods(cluster, namespace, "app=web"))
            and restart_count(p[0]) == 1
            and is_ready(p[0])
            and p[0]
        ),
        timeout=30,
        what="web-0 restarted and Ready",
    )
    cs = pod["status"]["containerStatuses"][0]
    assert cs["lastState"]["terminated"]["exitCode"] == 137
    new_pid = local_pid(cluster, namespace, "web-0")
    assert new_pid != old_pid and not pid_alive(old_pid)
    assert httpx.get(f"http://{pod['status']['podIP']}:{WEB_PORT}/", timeout=5).status_code == 200


def test_liveness_failure_restarts_and_run_to_completion(
    cluster: LocalCluster, namespace: str
) -> None:
    live = web_statefulset("live", replicas=1)
    live["metadata"]["namespace"] = namespace
    c = live["spec"]["template"]["spec"]["containers"][0]
    c["livenessProbe"] = {
        "httpGet": {"path": "/missing", "port": WEB_PORT},
        "periodSeconds": 1,
        "failureThreshold": 2,
    }
    once = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "once", "namespace": namespace},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "once", "image": "x", "command": ["python", "-c", "print('hello from', '$(WHO)')"],
                            "env": [{"name": "WHO", "value": "once"}]}],
        },
    }  # fmt: skip
    cluster.apply([live, once])
    wait_until(
        lambda: (p := pods(cluster, namespace, "app=live")) and restart_count(p[0]) >= 1,
        timeout=30,
        what="a liveness restart",
    )
    done = wait_until(
        lambda: (
            (p := cluster.get_json("pod", "once", "-n", namespace))["status"].get("phase")
            == "Succeeded"
            and p
        ),
        timeout=30,
        what="pod once Succeeded",
    )
    assert done["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    assert "hello from once" in cluster.pod_log(namespace, "once")


def test_deleting_statefulset_stops_processes_and_removes_pods(
    cluster: LocalCluster, namespace: str
) -> None:
    cluster.apply({**web_statefulset("web"), "metadata": {"name": "web", "namespace": namespace}})
    wait_ready(cluster, namespace, "app=web", 2)
    pids = [local_pid(cluster, namespace, n) for n in ("web-0", "web-1")]
    assert all(pids)
    t0 = time.monotonic()
    cluster.kubectl("delete", "statefulset", "web", "-n", namespace, "--wait=false")
    wait_until(lambda: not pods(cluster, namespace, "app=web"), timeout=30, what="pods gone")
    print(f"pods gone {time.monotonic() - t0:.1f}s after the delete")
    assert not any(pid_alive(pid) for pid in pids)
    assert not any(p["namespace"] == namespace for p in cluster.local_pods())


def test_custom_resources(cluster: LocalCluster, namespace: str) -> None:
    """Creating custom objects crashed this apiserver before the reflect2 fix."""
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.test.rlfleet.io"},
        "spec": {
            "group": "test.rlfleet.io",
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget", "shortNames": ["wdg"]},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": True, "storage": True, "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                    "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}},
            }],
        },
    }  # fmt: skip
    cluster.apply(crd)
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/widgets.test.rlfleet.io", "--timeout=30s"
    )
    obj = {"apiVersion": "test.rlfleet.io/v1", "kind": "Widget", "metadata": {"name": "w1", "namespace": namespace},
           "spec": {"labels": {"a": "b"}, "sizes": [1, 2], "nested": {"map": {"x": 1}}}}  # fmt: skip
    wait_until(lambda: cluster.apply(obj), timeout=20, what="Widget created")
    got = cluster.get_json("wdg", "w1", "-n", namespace)
    assert got["spec"]["nested"]["map"]["x"] == 1
    cluster.kubectl(
        "patch", "widget", "w1", "-n", namespace, "--type=merge", "-p", '{"spec":{"sizes":[3]}}'
    )
    assert cluster.get_json("widget", "w1", "-n", namespace)["spec"]["sizes"] == [3]
    assert cluster.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"  # still alive


def test_helm_and_kubectl_work_with_the_kubeconfig(
    cluster: LocalCluster, namespace: str, tmp_path: Path
) -> None:
    chart = tmp_path / "mini"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: mini\nversion: 0.1.0\n")
    (chart / "values.yaml").write_text("greeting: hello\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cm\n"
        "data:\n  greeting: {{ .Values.greeting | quote }}\n"
    )
    cluster.helm("install", "rel", str(chart), "-n", namespace, "--set", "greeting=hi", "--wait")
    assert cluster.get_json("configmap", "rel-cm", "-n", namespace)["data"]["greeting"] == "hi"
    assert "rel" in cluster.helm("list", "-n", namespace).stdout
    cluster.helm("uninstall", "rel", "-n", namespace)
    assert (
        cluster.kubectl("get", "configmap", "rel-cm", "-n", namespace, check=False).returncode != 0
    )
    # The environment a shell would get: KUBECONFIG + the cached tools first on PATH.
    env = cluster.env()
    res = subprocess.run(
        ["kubectl", "get", "nodes", "-o", "name"], env=env, capture_output=True, text=True
    )
    assert res.stdout.strip() == f"node/{NODE_NAME}"
    assert os.path.samefile(env["KUBECONFIG"], cluster.kubeconfig)
