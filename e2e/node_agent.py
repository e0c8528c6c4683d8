"""A local kubelet stand-in: runs the pods bound to one Node as local processes.

Started by LocalCluster (`python -m e2e.node_agent ...`). It

- registers the Node (Ready, capacity, InternalIP 127.0.0.1) and refreshes
  its Ready heartbeat every 10 s (strategic merge patch, conditions by type);
- watches the pods with spec.nodeName == its node; for each it picks a
  loopback IP of its own (127.0.0.2, .3, ...; unique machine-wide, across
  clusters, via lock files in /tmp/rlfleet-pod-ips), resolves the first
  container's env as the kubelet does (e2e/podenv.py), and runs its
  `command + args` as a local process in its own process group, with
  stdout+stderr appended to <state-dir>/pods/<namespace>_<name>.log, in the
  pod's own working directory <state-dir>/pods/<ns>_<name>_<uid8>.root
  (unless the container's workingDir exists): relative paths resolve in a
  filesystem of the pod's own, as in a container; removed with the pod.
  The image is ignored: the host's Python environment *is* the image
  (`python`/`python3` as argv[0] means this interpreter; the process
  inherits the agent's environment, then gets the container's variables,
  HOSTNAME=<pod name> and KUBECONFIG). Only the first container runs;
  init containers, volumes and ports are not emulated;
- gives each pod KUBECONFIG=<state-dir>/pods/<ns>_<name>/kubeconfig holding
  its ServiceAccount's token (the legacy token Secret mounted into the pod
  spec), so in-cluster programs act as their ServiceAccount under RBAC
  (none when automountServiceAccountToken is off);
- reports pods/status: podIP(s), hostIP, phase, containerStatuses,
  conditions; Ready follows the readinessProbe (e2e/probes.py), a failing
  liveness/startup probe restarts the container;
- restarts exited containers per restartPolicy with a short backoff
  (0.5 s doubling to 5 s; reset after 10 s of running);
- on deletion: SIGTERM the process group, wait terminationGracePeriodSeconds
  (at most 5 s), SIGKILL, then delete the pod with grace period 0.

Fault-injection control on 127.0.0.1:<control-port>:
    GET  /pods                               -> [{namespace, name, ip, pid, restarts, ready, root, ...}]
    POST /pods/<namespace>/<name>/kill?signal=KILL|TERM|STOP|CONT|<n>
         signals the pod's process group; a resulting exit is handled like
         any crash (restart per policy). 404 if the pod has no process.

Loopback only: pod IPs, probes and the control endpoint are all 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx

from e2e import probes, procs
from e2e.cluster import write_kubeconfig
from e2e.kubeapi import ApiError, KubeApi
from e2e.podenv import EnvError, command_line, resolve_env

log = logging.getLogger("node-agent")

HOST_IP = "127.0.0.1"
HEARTBEAT_S = 10.0
SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
MAX_GRACE_S = 5.0
DEFAULT_CAPACITY = {
    "cpu": "32",
    "memory": "128Gi",
    "pods": "110",
    "ephemeral-storage": "100Gi",
    "nvidia.com/gpu": "0",
}


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class IpPool:
    """Loopback pod IPs 127.0.0.2 ... 127.0.255.254, handed out round-robin
    (a just-freed address is not reused at once). Several clusters may run on
    one machine, sharing the loopback network: an IP is claimed machine-wide
    with an flock on <claims_dir>/<ip>.lock, released by the kernel if the
    agent dies."""

    def __init__(self, claims_dir: Path) -> None:
        self._lock = threading.Lock()
        self._claims: dict[str, int] = {}  # ip -> fd holding its lock
        self._dir = claims_dir
        self._dir.mkdir(parents=True, exist_ok=True)
        self._first = int(ipaddress.ip_address("127.0.0.2"))
        self._last = int(ipaddress.ip_address("127.0.255.254"))
        self._next = self._first

    def _claim(self, ip: str) -> bool:
        fd = os.open(self._dir / f"{ip}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._claims[ip] = fd
        return True

    def allocate(self, preferred: str | None = None) -> str:
        with self._lock:
            if (
                preferred
                and self._valid(int(ipaddress.ip_address(preferred)))
                and preferred not in self._claims
            ) and self._claim(preferred):
                return preferred
            for _ in range(self._last - self._first + 1):
                n = self._next
                self._next = self._first if n >= self._last else n + 1
                ip = str(ipaddress.ip_address(n))
                if self._valid(n) and ip not in self._claims and self._claim(ip):
                    return ip
        raise RuntimeError("no free loopback pod IP")

    def _valid(self, n: int) -> bool:
        return self._first <= n <= self._last and n & 0xFF not in (0, 1, 255)

    def release(self, ip: str) -> None:
        with self._lock:
            fd = self._claims.pop(ip, None)
            if fd is not None:
                os.close(fd)


class PodWorker(threading.Thread):
    """Runs one pod's first container and reports its status."""

    def __init__(self, agent: Agent, pod: dict) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.agent = agent
        self.pod = pod
        self.ns, self.name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.key = f"{self.ns}_{self.name}"
        status = pod.get("status", {})
        self.ip = agent.ips.allocate(status.get("podIP"))
        self.container = pod["spec"]["containers"][0]
        self.restarts = next(
            (c.get("restartCount", 0) for c in status.get("containerStatuses", [])), 0
        )
        self.start_time = status.get("startTime") or now_iso()
        self.proc: subprocess.Popen | None = None
        self.state: dict = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: dict = {}
        self.phase = "Pending"
        self.ready = False
        self.started = False
        self.env: dict[str, str] = {}
        self.deleting = threading.Event()  # deletionTimestamp set: stop, then delete the pod
        self.gone = threading.Event()  # the pod object is gone: just stop
        self._transitions: dict[str, tuple[str, str]] = {}
        self._last_patch: str = ""
        self.pod_dir = agent.state_dir / "pods" / self.key
        self.log_path = agent.state_dir / "pods" / f"{self.key}.log"
        self.pid_file = agent.state_dir / "pids" / f"{self.key}_{self.uid[:8]}.pid"
        # The pod's own directory, its working directory: what a container's own filesystem is
        # to relative paths (one pod never sees another's files, nor a deleted namesake's).
        self.root_dir = agent.state_dir / "pods" / f"{self.key}_{self.uid[:8]}.root"

    # -- events from the agent -----------------------------------------------

    def update(self, pod: dict) -> None:
        self.pod = pod
        if pod["metadata"].get("deletionTimestamp"):
            self.deleting.set()

    def stopping(self) -> bool:
        return self.deleting.is_set() or self.gone.is_set() or self.agent.shutdown.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to seconds; True if the pod should stop."""
        deadline = time.monotonic() + seconds
        while not self.stopping() and time.monotonic() < deadline:
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        return self.stopping()

    # -- main loop -------------------------------------------------------------

    def run(self) -> None:
        log.info("pod %s/%s: assigned %s", self.ns, self.name, self.ip)
        try:
            self._run()
        except Exception:
            log.exception("pod %s/%s: worker failed", self.ns, self.name)
        finally:
            self._stop_process()
            self.agent.ips.release(self.ip)
            if self.deleting.is_set() and not self.agent.shutdown.is_set():
                shutil.rmtree(self.root_dir, ignore_errors=True)
                self._delete_pod()
            self.agent.forget(self)

    def _run(self) -> None:
        self._patch_status()
        backoff = 0.25  # doubled before use: 0.5 s, 1 s, 2 s, ... 5 s
        while not self.stopping():
            try:
                self.env = self._resolve_env()
            except EnvError as e:
                self._set_waiting("CreateContainerConfigError", str(e))
                if self.wait(1.0):
                    return
                continue
            ran_for = self._run_once()
            if self.stopping():
                return
            code = self.state["terminated"]["exitCode"]
            policy = self.pod["spec"].get("restartPolicy", "Always")
            if policy == "Never" or (policy == "OnFailure" and code == 0):
                self.phase = "Succeeded" if code == 0 else "Failed"
                self._patch_status()
                log.info("pod %s/%s: finished (%s)", self.ns, self.name, self.phase)
                while not self.wait(1.0):
                    pass
                return
            backoff = 0.5 if ran_for > 10 else min(backoff * 2, 5.0)
            self.last_state = self.state
            self._set_waiting(
                "CrashLoopBackOff", f"back-off {backoff:.1f}s restarting failed container"
            )
            log.info("pod %s/%s: exited %s, restarting in %.1fs", self.ns, self.name, code, backoff)
            if self.wait(backoff):
                return
            self.restarts += 1

    def _run_once(self) -> float:
        """Start the container, probe it until it exits (or the pod stops);
        returns how long it ran."""
        started_at = time.monotonic()
        self._start_process()
        if self.proc is None:
            return 0.0
        c = self.container
        probers = {
            kind: probes.Prober(kind, c[f"{kind}Probe"], started_at)
            for kind in ("startup", "liveness", "readiness")
            if c.get(f"{kind}Probe")
        }
        self.started = "startup" not in probers
        self.ready = self.started and "readiness" not in probers
        self._patch_status()
        while not self.stopping():
            code = self.proc.poll()
            if code is not None:
                self._record_exit(code, "Error" if code else "Completed")
                return time.monotonic() - started_at
            now = time.monotonic()
            for kind, p in probers.items():
                if kind != "startup" and not self.started:
                    continue
                if kind == "startup" and self.started:
                    continue
                if p.due(now):
                    p.record(
                        probes.check(p.probe, c, self.ip, self._proc_env(), str(self._cwd())), now
                    )
                    if p.failed:
                        log.info("pod %s/%s: %s probe failed, killing", self.ns, self.name, kind)
                        procs.stop_group(self.proc.pid, self._grace(), self.proc)
                        self._record_exit(self.proc.returncode, "Error", f"{kind} probe failed")
                        return time.monotonic() - started_at
                    if kind == "startup" and p.ok:
                        self.started = True
                        self.ready = "readiness" not in probers
                    if kind == "readiness":
                        self.ready = p.ok
            self._patch_status()
            time.sleep(0.1)
        return time.monotonic() - started_at

    # -- the process -------------------------------------------------------------

    def _cwd(self) -> Path:
        """The container's workingDir if it exists here, else the pod's own directory."""
        wd = self.container.get("workingDir")
        if wd and Path(wd).is_dir():
            return Path(wd)
        self.root_dir.mkdir(parents=True, exist_ok=True)
        return self.root_dir

    def _proc_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["HOSTNAME"] = self.name
        kubeconfig = self.pod_dir / "kubeconfig"
        if kubeconfig.exists():
            env["KUBECONFIG"] = str(kubeconfig)
        env.update(self.env)
        return env

    def _start_process(self) -> None:
        argv = command_line(self.container, self.env)
        if argv and argv[0] in ("python", "python3"):
            argv[0] = sys.executable
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            out.write(f"=== {now_iso()} start #{self.restarts} on {self.ip}: {argv}\n".encode())
            out.flush()
            try:
                if not argv:
                    raise OSError("container has no command (images are not run here)")
                self.proc = subprocess.Popen(
                    # Killed with the agent even if it dies without cleaning up.
                    procs.with_parent_death_signal(argv, "KILL"),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=self._proc_env(),
                    cwd=self._cwd(),
                    start_new_session=True,
                )
            except OSError as e:
                out.write(f"=== start failed: {e}\n".encode())
                self.proc = None
                self.state = {"terminated": {"exitCode": 128, "reason": "StartError", "message": str(e),
                                                  "startedAt": now_iso(), "finishedAt": now_iso()}}  # fmt: skip
                self.ready = False
                return
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.write_text(f"{self.proc.pid}\n")
        self.state = {"running": {"startedAt": now_iso()}}
        self.phase = "Running"
        log.info("pod %s/%s: started pid %d: %s", self.ns, self.name, self.proc.pid, " ".join(argv))

    def _record_exit(self, code: int, reason: str, message: str = "") -> None:
        if code < 0:  # killed by a signal: report as the shell would
            code, reason = 128 - code, "Error"
        started = self.state.get("running", {}).get("startedAt", now_iso())
        term = {"exitCode": code, "reason": reason, "startedAt": started, "finishedAt": now_iso(),
                "containerID": self._container_id()}  # fmt: skip
        if message:
            term["message"] = message
        self.state = {"terminated": term}
        self.ready = False
        log.info("pod %s/%s: process exited with %d", self.ns, self.name, code)
        self._reap()

    def _reap(self) -> None:
        """The leader is gone: clean up the rest of its process group."""
        if self.proc is not None:
            if procs.group_alive(self.proc.pid):
                procs.stop_group(self.proc.pid, 1.0, self.proc)
            self.pid_file.unlink(missing_ok=True)

    def _grace(self) -> float:
        grace = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
        return min(float(grace), MAX_GRACE_S)

    def _stop_process(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None or procs.group_alive(self.proc.pid):
            log.info(
                "pod %s/%s: stopping pid %d (grace %.0fs)",
                self.ns,
                self.name,
                self.proc.pid,
                self._grace(),
            )
            procs.stop_group(self.proc.pid, self._grace(), self.proc)
        self.pid_file.unlink(missing_ok=True)

    def _container_id(self) -> str:
        return f"local://{self.proc.pid}" if self.proc else ""

    # -- API -----------------------------------------------------------------------

    def _fetch(self, kind: str, name: str) -> dict | None:
        try:
            return self.agent.api.get(f"/api/v1/namespaces/{self.ns}/{kind}/{name}")
        except ApiError as e:
            if e.status == 404:
                return None
            raise EnvError(str(e)) from e

    def _resolve_env(self) -> dict[str, str]:
        self._write_kubeconfig()
        return resolve_env(
            self.pod, self.container, self._fetch, self.ip, HOST_IP, self.agent.capacity
        )

    def _write_kubeconfig(self) -> None:
        """KUBECONFIG from the ServiceAccount token Secret mounted into the pod."""
        mounts = {
            m["name"]
            for m in self.container.get("volumeMounts", [])
            if m.get("mountPath") == SA_MOUNT
        }
        secret_name = next(
            (v["secret"]["secretName"] for v in self.pod["spec"].get("volumes", [])
             if v["name"] in mounts and "secret" in v),
            None,
        )  # fmt: skip
        if secret_name is None:
            return
        secret = self._fetch("secrets", secret_name)
        token = (secret or {}).get("data", {}).get("token")
        if not token:
            raise EnvError(f"service account token secret {self.ns}/{secret_name} not ready")
        self.pod_dir.mkdir(parents=True, exist_ok=True)
        ca = self.pod_dir / "ca.crt"
        ca.write_bytes(base64.b64decode(secret["data"].get("ca.crt", "")))
        (self.pod_dir / "token").write_text(base64.b64decode(token).decode())
        (self.pod_dir / "namespace").write_text(self.ns)
        sa = self.pod["spec"].get("serviceAccountName", "default")
        write_kubeconfig(self.pod_dir / "kubeconfig", self.agent.api.server, base64.b64decode(token).decode(),
                         ca if ca.stat().st_size else None, f"system:serviceaccount:{self.ns}:{sa}",
                         namespace=self.ns)  # fmt: skip

    def _set_waiting(self, reason: str, message: str) -> None:
        self.state = {"waiting": {"reason": reason, "message": message}}
        self.ready = False
        self._patch_status()

    def _condition(self, kind: str, ok: bool) -> dict:
        status = "True" if ok else "False"
        prev = self._transitions.get(kind)
        if prev is None or prev[0] != status:
            self._transitions[kind] = (status, now_iso())
        return {"type": kind, "status": status, "lastProbeTime": None,
                "lastTransitionTime": self._transitions[kind][1]}  # fmt: skip

    def status(self) -> dict:
        running = "running" in self.state
        ready = running and self.ready
        cs = {
            "name": self.container["name"],
            "image": self.container.get("image", ""),
            "imageID": "",
            "containerID": self._container_id(),
            "ready": ready,
            "started": running and self.started,
            "restartCount": self.restarts,
            "state": self.state,
            "lastState": self.last_state,
        }
        return {
            "phase": self.phase,
            "hostIP": HOST_IP,
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "startTime": self.start_time,
            "conditions": [
                self._condition("Initialized", True),
                self._condition("Ready", ready),
                self._condition("ContainersReady", ready),
                self._condition("PodScheduled", True),
            ],
            "containerStatuses": [cs],
        }

    def _patch_status(self) -> None:
        body = {"status": self.status()}
        text = json.dumps(body, sort_keys=True)
        if text == self._last_patch:
            return
        try:
            self.agent.api.patch(f"/api/v1/namespaces/{self.ns}/pods/{self.name}/status", body)
            self._last_patch = text
        except (ApiError, httpx.HTTPError) as e:
            if isinstance(e, ApiError) and e.status == 404:
                self.gone.set()
            else:
                log.warning("pod %s/%s: status patch failed: %s", self.ns, self.name, e)

    def _delete_pod(self) -> None:
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}}
        try:
            self.agent.api.delete(f"/api/v1/namespaces/{self.ns}/pods/{self.name}", body)
            log.info("pod %s/%s: deleted", self.ns, self.name)
        except ApiError as e:
            if e.status not in (404, 409):
                log.warning("pod %s/%s: delete failed: %s", self.ns, self.name, e)

    def describe(self) -> dict:
        alive = self.proc is not None and self.proc.poll() is None
        return {"namespace": self.ns, "name": self.name, "uid": self.uid, "ip": self.ip,
                "pid": self.proc.pid if alive else None, "restarts": self.restarts,
                "ready": self.ready and alive, "phase": self.phase, "log": str(self.log_path),
                "root": str(self.root_dir)}  # fmt: skip


class Agent:
    def __init__(self, api: KubeApi, node: str, state_dir: Path, capacity: dict[str, str]) -> None:
        self.api = api
        self.node = node
        self.state_dir = state_dir
        self.capacity = capacity
        self.ips = IpPool(Path(os.environ.get("RLFLEET_POD_IP_CLAIMS", "/tmp/rlfleet-pod-ips")))
        self.shutdown = threading.Event()
        self.workers: dict[str, PodWorker] = {}
        self.lock = threading.Lock()
        self._ready_since = now_iso()

    # -- node ----------------------------------------------------------------------

    def register(self) -> None:
        labels = {"kubernetes.io/hostname": self.node, "kubernetes.io/os": "linux",
                  "kubernetes.io/arch": "amd64", "rlfleet.io/local-node": "true"}  # fmt: skip
        try:
            self.api.create("/api/v1/nodes", {"apiVersion": "v1", "kind": "Node",
                                              "metadata": {"name": self.node, "labels": labels}})  # fmt: skip
        except ApiError as e:
            if e.status != 409:
                raise
        self.api.patch(
            f"/api/v1/nodes/{self.node}/status", {"status": self._node_status(full=True)}
        )
        log.info("node %s registered (Ready)", self.node)

    def _node_status(self, full: bool = False) -> dict:
        t = now_iso()

        def cond(kind: str, status: str, reason: str) -> dict:
            return {"type": kind, "status": status, "reason": reason, "message": reason,
                    "lastHeartbeatTime": t, "lastTransitionTime": self._ready_since}  # fmt: skip

        status: dict = {
            "conditions": [
                cond("Ready", "True", "KubeletReady"),
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID"),
            ]
        }
        if full:
            status.update(
                capacity=self.capacity,
                allocatable=self.capacity,
                addresses=[{"type": "InternalIP", "address": HOST_IP}, {"type": "Hostname", "address": self.node}],
                daemonEndpoints={"kubeletEndpoint": {"Port": 0}},
                nodeInfo={
                    "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": platform.release(),
                    "osImage": "rlfleet local node agent", "containerRuntimeVersion": "local://process",
                    "kubeletVersion": "v1.20.2", "kubeProxyVersion": "v1.20.2",
                    "operatingSystem": "linux", "architecture": "amd64",
                },
            )  # fmt: skip
        return status

    def heartbeat(self) -> None:
        while not self.shutdown.wait(HEARTBEAT_S):
            try:
                self.api.patch(f"/api/v1/nodes/{self.node}/status", {"status": self._node_status()})
            except ApiError as e:
                if e.status == 404:  # someone deleted the Node: register again
                    with contextlib.suppress(Exception):
                        self.register()
                else:
                    log.warning("heartbeat failed: %s", e)
            except httpx.HTTPError as e:
                log.warning("heartbeat failed: %s", e)

    # -- pods ----------------------------------------------------------------------

    def sync_pods(self) -> None:
        """List + watch this node's pods, forever (relist on any error)."""
        path, selector = "/api/v1/pods", f"spec.nodeName={self.node}"
        while not self.shutdown.is_set():
            try:
                listing = self.api.get(path, fieldSelector=selector)
                uids = set()
                for pod in listing["items"]:
                    uids.add(pod["metadata"]["uid"])
                    self.on_pod("MODIFIED", pod)
                with self.lock:
                    vanished = [w for uid, w in self.workers.items() if uid not in uids]
                for w in vanished:
                    w.gone.set()
                rv = listing["metadata"]["resourceVersion"]
                while not self.shutdown.is_set():
                    for event in self.api.watch(path, rv, fieldSelector=selector, timeoutSeconds=300,
                                                allowWatchBookmarks="true"):  # fmt: skip
                        if event["type"] == "ERROR":
                            raise ApiError(
                                event["object"].get("code", 0), json.dumps(event["object"]), "watch"
                            )
                        rv = event["object"]["metadata"]["resourceVersion"]
                        if event["type"] != "BOOKMARK":
                            self.on_pod(event["type"], event["object"])
            except Exception as e:
                if not self.shutdown.is_set():
                    log.warning("pod watch: %s; relisting", e)
                    time.sleep(1.0)

    def on_pod(self, kind: str, pod: dict) -> None:
        uid = pod["metadata"]["uid"]
        with self.lock:
            worker = self.workers.get(uid)
            if kind == "DELETED":
                if worker:
                    worker.gone.set()
                return
            if worker is not None:
                worker.update(pod)
                return
            if pod["metadata"].get("deletionTimestamp"):
                # Nothing running here (e.g. the agent restarted): finish the deletion.
                with contextlib.suppress(ApiError):
                    self.api.delete(f"/api/v1/namespaces/{pod['metadata']['namespace']}/pods/"
                                    f"{pod['metadata']['name']}",
                                    {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}})  # fmt: skip
                return
            if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                return
            worker = PodWorker(self, pod)
            self.workers[uid] = worker
        worker.start()

    def forget(self, worker: PodWorker) -> None:
        with self.lock:
            if self.workers.get(worker.uid) is worker:
                del self.workers[worker.uid]

    def find(self, ns: str, name: str) -> PodWorker | None:
        with self.lock:
            return next((w for w in self.workers.values() if w.ns == ns and w.name == name), None)

    def stop_all(self) -> None:
        self.shutdown.set()
        with self.lock:
            workers = list(self.workers.values())
        for w in workers:
            w.join(timeout=MAX_GRACE_S + 3)

    # -- control endpoint ----------------------------------------------------------

    def serve_control(self, port: int) -> ThreadingHTTPServer:
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, code: int, body: object) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/pods":
                    with agent.lock:
                        self._send(200, [w.describe() for w in agent.workers.values()])
                elif self.path == "/healthz":
                    self._send(200, {"ok": True})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:
                url = urlparse(self.path)
                parts = url.path.strip("/").split("/")
                if len(parts) != 4 or parts[0] != "pods" or parts[3] != "kill":
                    return self._send(
                        404, {"error": "POST /pods/<namespace>/<name>/kill?signal=KILL"}
                    )
                sig_name = parse_qs(url.query).get("signal", ["KILL"])[0].upper()
                try:
                    sig = (
                        int(sig_name)
                        if sig_name.isdigit()
                        else signal.Signals[f"SIG{sig_name.removeprefix('SIG')}"]
                    )
                except KeyError:
                    return self._send(400, {"error": f"unknown signal {sig_name}"})
                worker = agent.find(parts[1], parts[2])
                proc = worker.proc if worker else None
                if proc is None or proc.poll() is not None:
                    return self._send(
                        404, {"error": f"pod {parts[1]}/{parts[2]} has no running process"}
                    )
                procs.signal_group(proc.pid, sig)
                log.info(
                    "control: sent signal %s to pod %s/%s (pid %d)",
                    sig_name,
                    parts[1],
                    parts[2],
                    proc.pid,
                )
                return self._send(
                    200, {"pid": proc.pid, "signal": int(sig), "restarts": worker.restarts}
                )

            def log_message(self, fmt: str, *args: object) -> None:
                log.debug("control: " + fmt, *args)

        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=server.serve_forever, name="control", daemon=True).start()
        return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m e2e.node_agent", description="local kubelet stand-in"
    )
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--node-name", default="rlfleet-local")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--control-port", type=int, required=True)
    parser.add_argument("--capacity", default="{}", help="JSON overrides of the node capacity")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    os.environ.pop("KUBECONFIG", None)  # pods never inherit the admin credentials
    capacity = {**DEFAULT_CAPACITY, **json.loads(args.capacity)}
    agent = Agent(
        KubeApi.from_kubeconfig(args.kubeconfig),
        args.node_name,
        args.state_dir,
        capacity,
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: agent.shutdown.set())
    server = agent.serve_control(args.control_port)
    while not agent.shutdown.is_set():
        try:
            agent.register()
            break
        except (ApiError, httpx.HTTPError) as e:
            log.warning("registering node: %s", e)
            agent.shutdown.wait(1.0)
    threading.Thread(target=agent.heartbeat, name="heartbeat", daemon=True).start()
    threading.Thread(target=agent.sync_pods, name="pods", daemon=True).start()
    while not agent.shutdown.wait(1.0):
        pass
    log.info("shutting down: stopping %d pod(s)", len(agent.workers))
    server.shutdown()
    agent.stop_all()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
