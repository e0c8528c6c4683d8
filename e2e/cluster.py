"""A real local Kubernetes control plane: etcd + kube-apiserver +
kube-controller-manager + kube-scheduler (v1.20.2, built by e2e/build_k8s.sh)
and the local node agent (e2e/node_agent.py) that runs pods as processes.

From Python::

    with LocalCluster(tmp_path / "k8s") as cluster:
        cluster.kubectl("apply", "-f", "x.yaml")
        cluster.helm("install", "rel", "helm/rlfleet")

From a shell::

    python -m e2e.cluster up      # prints `export KUBECONFIG=...`, Ctrl-C stops it
    python -m e2e.cluster down    # stops a cluster left running in --workdir

Everything listens on 127.0.0.1 only, on free ports chosen at start, so two
clusters can run side by side. Logs: <workdir>/logs/*.log, pod output:
<workdir>/node/pods/<namespace>_<name>.log.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from e2e import procs
from e2e.kubeapi import ApiError, KubeApi

REPO_ROOT = Path(__file__).resolve().parents[1]
K8S_VERSION = "1.20.2"
NODE_NAME = "rlfleet-local"
SERVICE_CIDR = "10.0.0.0/24"
ADVERTISE_ADDRESS = "10.0.0.1"  # must not be loopback (endpoints controller)


def cache_dir() -> Path:
    return Path(os.environ.get("RLFLEET_CACHE", Path.home() / ".cache" / "rlfleet"))


def bin_dir() -> Path:
    return cache_dir() / f"k8s-{K8S_VERSION}" / "bin"


def tools_dir() -> Path:
    return cache_dir() / "tools" / "bin"


def binaries_ready() -> bool:
    names = ["kube-apiserver", "kube-controller-manager", "kube-scheduler"]
    return (
        all((bin_dir() / n).exists() for n in names)
        and all((tools_dir() / n).exists() for n in ["kubectl", "helm"])
        and shutil.which("etcd") is not None
    )


def ensure_built() -> None:
    """Run e2e/build_k8s.sh unless every binary is already cached."""
    if not binaries_ready():
        subprocess.run(["bash", str(REPO_ROOT / "e2e" / "build_k8s.sh")], check=True)


@dataclass
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    node_agent: int

    @classmethod
    def pick(cls) -> Ports:
        ports: list[int] = []
        while len(ports) < 6:
            p = procs.free_port()
            if p not in ports:
                ports.append(p)
        return cls(*ports)


class LocalCluster:
    """A local control plane plus node agent, rooted in workdir."""

    # Stop order is the reverse of this.
    DAEMONS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "node-agent")

    def __init__(
        self,
        workdir: str | Path,
        ports: Ports | None = None,
        pod_env: dict[str, str] | None = None,
        log=print,
    ) -> None:
        """pod_env: extra environment for every pod process (on top of this
        process's environment). A pod's working directory is its own (see node_agent)."""
        self.workdir = Path(workdir).resolve()
        self.ports = ports or Ports.pick()
        self.pod_env = dict(pod_env or {})
        self.log = log
        self.certs = self.workdir / "certs"
        self.logs = self.workdir / "logs"
        self.run_dir = self.workdir / "run"
        self.node_dir = self.workdir / "node"
        self.kubeconfig = self.workdir / "kubeconfig"
        self.api_url = f"https://127.0.0.1:{self.ports.apiserver}"
        self.agent_url = f"http://127.0.0.1:{self.ports.node_agent}"
        self._procs: dict[str, subprocess.Popen] = {}
        self._token = ""

    # -- lifecycle -------------------------------------------------------

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 90.0) -> None:
        """Bring everything up; returns once the node is Ready and the default
        ServiceAccount has its token (pods can be created)."""
        t0 = time.monotonic()
        ensure_built()
        for d in (self.certs, self.logs, self.run_dir, self.node_dir):
            d.mkdir(parents=True, exist_ok=True)
        try:
            self._write_credentials()
            self._start_etcd()
            self._start_apiserver(timeout)
            self._start_controllers()
            self._start_node_agent()
            self._wait_usable(timeout)
        except BaseException:
            self.stop()
            raise
        self.log(
            f"[cluster] up in {time.monotonic() - t0:.1f}s: {self.api_url}, KUBECONFIG={self.kubeconfig}"
        )

    def stop(self) -> None:
        """Stop the node agent (and with it every pod process), then the
        control plane; kill whatever is left of any process group."""
        for name in reversed(self.DAEMONS):
            pid = self._pid(name)
            if pid is None:
                continue
            grace = 15.0 if name == "node-agent" else 5.0
            procs.stop_group(pid, grace, self._procs.get(name))
            (self.run_dir / f"{name}.pid").unlink(missing_ok=True)
            if name == "node-agent":
                self._kill_leftover_pods()
        self._procs.clear()
        self.log(f"[cluster] stopped ({self.workdir})")

    def _pid(self, name: str) -> int | None:
        if name in self._procs:
            return self._procs[name].pid
        pid = procs.read_pid(self.run_dir / f"{name}.pid")
        # Guard against a recycled PID: only signal our own program.
        if pid and (name.replace("-", "_") in procs.cmdline(pid) or name in procs.cmdline(pid)):
            return pid
        return None

    def _kill_leftover_pods(self) -> None:
        """Pod process groups the agent recorded but did not clean up (it died)."""
        for pid_file in (self.node_dir / "pids").glob("*.pid"):
            pgid = procs.read_pid(pid_file)
            if pgid and procs.group_alive(pgid):
                self.log(f"[cluster] killing leftover pod process group {pgid} ({pid_file.stem})")
                procs.stop_group(pgid, 1.0)
            pid_file.unlink(missing_ok=True)

    # -- setup steps -----------------------------------------------------

    def _openssl(self, *args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=self.certs)

    def _write_credentials(self) -> None:
        """CA, apiserver serving cert, ServiceAccount signing keys, admin token."""
        c = self.certs
        if not (c / "apiserver.crt").exists():
            self._openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
                          "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=rlfleet-local-ca")  # fmt: skip
            (c / "apiserver.ext").write_text(
                "basicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth\n"
                "authorityKeyIdentifier=keyid\n"
                f"subjectAltName=IP:127.0.0.1,IP:{ADVERTISE_ADDRESS},DNS:localhost,"
                "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,"
                "DNS:kubernetes.default.svc.cluster.local\n"
            )
            self._openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "apiserver.key",
                          "-out", "apiserver.csr", "-subj", "/CN=kube-apiserver")  # fmt: skip
            self._openssl("x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                          "-CAcreateserial", "-days", "3650", "-extfile", "apiserver.ext",
                          "-out", "apiserver.crt")  # fmt: skip
        if not (c / "sa.pub").exists():
            self._openssl("genrsa", "-out", "sa.key", "2048")
            self._openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub")
        tokens = c / "tokens.csv"
        if not tokens.exists():
            tokens.write_text(f'{secrets.token_hex(24)},admin,admin-uid,"system:masters"\n')
            tokens.chmod(0o600)
        self._token = tokens.read_text().split(",")[0]
        write_kubeconfig(self.kubeconfig, self.api_url, self._token, c / "ca.crt", "admin")

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.log(f"[cluster] starting {name}")
        # If this process dies without stop(), the daemons follow (SIGTERM).
        # Only from the main thread: the signal fires when the starting thread exits.
        on_main = threading.current_thread() is threading.main_thread()
        self._procs[name] = procs.spawn(
            argv,
            self.logs / f"{name}.log",
            self.run_dir / f"{name}.pid",
            env=env,
            cwd=self.workdir,
            parent_death_signal="TERM" if on_main else None,
        )

    def _check_alive(self, name: str) -> None:
        proc = self._procs[name]
        if proc.poll() is not None:
            tail = (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")

    def _start_etcd(self) -> None:
        p = self.ports
        client, peer = f"http://127.0.0.1:{p.etcd_client}", f"http://127.0.0.1:{p.etcd_peer}"
        self._spawn("etcd", [
            "etcd", "--name", "local", "--data-dir", str(self.workdir / "etcd"),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"local={peer}",
            "--log-level", "warn",
        ])  # fmt: skip

    def _start_apiserver(self, timeout: float) -> None:
        c = self.certs
        self._spawn("kube-apiserver", [
            str(bin_dir() / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{self.ports.etcd_client}",
            "--bind-address=127.0.0.1", f"--secure-port={self.ports.apiserver}",
            "--insecure-port=0", f"--advertise-address={ADVERTISE_ADDRESS}",
            f"--cert-dir={c}", f"--tls-cert-file={c}/apiserver.crt",
            f"--tls-private-key-file={c}/apiserver.key",
            f"--token-auth-file={c}/tokens.csv", "--authorization-mode=Node,RBAC",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={c}/sa.pub",
            f"--service-account-signing-key-file={c}/sa.key",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true", "--profiling=false",
        ])  # fmt: skip
        deadline = time.monotonic() + timeout
        with httpx.Client(
            verify=ssl.create_default_context(cafile=str(c / "ca.crt")), timeout=2.0
        ) as http:
            while True:
                self._check_alive("etcd")
                self._check_alive("kube-apiserver")
                with contextlib.suppress(httpx.HTTPError):
                    r = http.get(
                        f"{self.api_url}/readyz", headers={"Authorization": f"Bearer {self._token}"}
                    )
                    if r.status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise TimeoutError("kube-apiserver not ready; see logs/kube-apiserver.log")
                time.sleep(0.25)

    def _start_controllers(self) -> None:
        kc, c = str(self.kubeconfig), self.certs
        common = [f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
                  f"--authorization-kubeconfig={kc}", "--leader-elect=false",
                  "--bind-address=127.0.0.1", "--port=0"]  # fmt: skip
        self._spawn("kube-controller-manager", [
            str(bin_dir() / "kube-controller-manager"), *common,
            f"--secure-port={self.ports.controller_manager}",
            f"--cert-dir={self.workdir / 'kcm-certs'}",
            f"--service-account-private-key-file={c}/sa.key",
            f"--root-ca-file={c}/ca.crt", "--use-service-account-credentials=true",
            "--controllers=*",
        ])  # fmt: skip
        self._spawn("kube-scheduler", [
            str(bin_dir() / "kube-scheduler"), *common,
            f"--secure-port={self.ports.scheduler}",
            f"--cert-dir={self.workdir / 'scheduler-certs'}",
        ])  # fmt: skip

    def _start_node_agent(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        env.update(self.pod_env)
        paths = [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(":") if p]
        env["PYTHONPATH"] = ":".join(dict.fromkeys(paths))
        env["PYTHONUNBUFFERED"] = "1"
        self._spawn("node-agent", [
            sys.executable, "-m", "e2e.node_agent",
            "--kubeconfig", str(self.kubeconfig), "--node-name", NODE_NAME,
            "--state-dir", str(self.node_dir), "--control-port", str(self.ports.node_agent),
        ], env=env)  # fmt: skip

    def _wait_usable(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        api = self.api()
        try:
            while True:
                for name in self.DAEMONS:
                    self._check_alive(name)
                with contextlib.suppress(ApiError, httpx.HTTPError):
                    node = api.get(f"/api/v1/nodes/{NODE_NAME}")
                    schedulable = not any(
                        t["effect"] == "NoSchedule" for t in node["spec"].get("taints", [])
                    )
                    if (
                        node_ready(node)
                        and schedulable
                        and api.get("/api/v1/namespaces/default/serviceaccounts/default").get(
                            "secrets"
                        )
                    ):
                        return
                if time.monotonic() > deadline:
                    raise TimeoutError("cluster not usable (node Ready + default ServiceAccount)")
                time.sleep(0.25)
        finally:
            api.close()

    # -- using it --------------------------------------------------------

    def api(self) -> KubeApi:
        """A new admin REST client (close it when done)."""
        return KubeApi(self.api_url, self._token or self._read_token(), str(self.certs / "ca.crt"))

    def _read_token(self) -> str:
        return (self.certs / "tokens.csv").read_text().split(",")[0]

    def env(self) -> dict[str, str]:
        """os.environ plus KUBECONFIG and PATH with kubectl/helm first."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{tools_dir()}:{env.get('PATH', '')}"
        for kind in ("CACHE", "CONFIG", "DATA"):
            env.setdefault(f"HELM_{kind}_HOME", str(self.workdir / "helm" / kind.lower()))
        return env

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        """Run the cached kubectl against this cluster (text output captured)."""
        return self._tool("kubectl", args, check, input, timeout)

    def helm(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess:
        """Run the cached helm against this cluster (text output captured)."""
        return self._tool("helm", args, check, input, timeout)

    def _tool(
        self, tool: str, args: tuple[str, ...], check: bool, input: str | None, timeout: float
    ) -> subprocess.CompletedProcess:
        argv = [str(tools_dir() / tool), "--kubeconfig", str(self.kubeconfig), *args]
        res = subprocess.run(
            argv, input=input, capture_output=True, text=True, env=self.env(), timeout=timeout
        )
        if check and res.returncode != 0:
            raise subprocess.CalledProcessError(res.returncode, argv, res.stdout, res.stderr)
        return res

    def get_json(self, *args: str) -> dict:
        """`kubectl get ARGS -o json`, parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def apply(self, manifest: dict | list[dict] | str) -> subprocess.CompletedProcess:
        """kubectl apply -f - of a dict, a list of dicts, or YAML text."""
        if not isinstance(manifest, str):
            docs = manifest if isinstance(manifest, list) else [manifest]
            manifest = yaml.safe_dump_all(docs)
        return self.kubectl("apply", "-f", "-", input=manifest)

    # -- node agent control ----------------------------------------------

    def kill_pod(self, namespace: str, name: str, sig: str = "KILL") -> dict:
        """Send a signal to a pod's process group (fault injection). The agent
        then treats the exit like a container crash (restart per policy)."""
        r = httpx.post(
            f"{self.agent_url}/pods/{namespace}/{name}/kill", params={"signal": sig}, timeout=10
        )
        r.raise_for_status()
        return r.json()

    def local_pods(self) -> list[dict]:
        """What the node agent runs: namespace, name, ip, pid, restarts, ready."""
        r = httpx.get(f"{self.agent_url}/pods", timeout=10)
        r.raise_for_status()
        return r.json()

    def pod_log(self, namespace: str, name: str) -> str:
        """A pod's stdout+stderr (there is no `kubectl logs`: no kubelet API)."""
        path = self.node_dir / "pods" / f"{namespace}_{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def wait_until(predicate, timeout: float = 30.0, what: str = "condition", interval: float = 0.2):
    """Poll predicate() until it returns something truthy (returned); TimeoutError after timeout."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # keep polling through transient errors
            last_error = e
        time.sleep(interval)
    raise TimeoutError(
        f"timed out after {timeout:.0f}s waiting for {what}"
        + (f" (last error: {last_error})" if last_error else "")
    )


def node_ready(node: dict) -> bool:
    conds = node.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)


def write_kubeconfig(
    path: Path,
    server: str,
    token: str,
    ca_file: Path | None,
    user: str,
    namespace: str | None = None,
) -> None:
    """A token kubeconfig (verifying the apiserver with ca_file when given)."""
    cluster: dict = {"server": server}
    if ca_file is not None:
        cluster["certificate-authority"] = str(ca_file)
    else:
        cluster["insecure-skip-tls-verify"] = True
    context = {"cluster": "rlfleet-local", "user": user}
    if namespace:
        context["namespace"] = namespace
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "rlfleet-local", "cluster": cluster}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "rlfleet-local", "context": context}],
        "current-context": "rlfleet-local",
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(cfg))
    tmp.chmod(0o600)
    tmp.replace(path)


# -- CLI ---------------------------------------------------------------------


def _cmd_up(workdir: Path) -> int:
    if (workdir / "run").exists() and any(
        procs.read_pid(f) and procs.group_alive(procs.read_pid(f) or 0)
        for f in (workdir / "run").glob("*.pid")
    ):
        print(
            f"a cluster is already running in {workdir}; run `python -m e2e.cluster down` first",
            file=sys.stderr,
        )
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    cluster = LocalCluster(workdir)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    (workdir / "run").mkdir(parents=True, exist_ok=True)
    (workdir / "run" / "cli.pid").write_text(f"{os.getpid()}\n")
    try:
        cluster.start()
        print(f"\nexport KUBECONFIG={cluster.kubeconfig} PATH={tools_dir()}:$PATH\n", flush=True)
        print("cluster is up; Ctrl-C (or `python -m e2e.cluster down`) stops it", flush=True)
        while not stop.wait(1.0):
            if any(p.poll() is not None for p in cluster._procs.values()):
                print("a cluster daemon exited; see logs in " + str(cluster.logs), file=sys.stderr)
                break
    finally:
        cluster.stop()
        (workdir / "run" / "cli.pid").unlink(missing_ok=True)
    return 0


def _cmd_down(workdir: Path) -> int:
    cli_pid = procs.read_pid(workdir / "run" / "cli.pid")
    if cli_pid and "e2e.cluster" in procs.cmdline(cli_pid):
        os.kill(cli_pid, signal.SIGTERM)  # `up` stops its own cluster
        deadline = time.monotonic() + 30
        while Path(f"/proc/{cli_pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
    LocalCluster(workdir, ports=Ports(0, 0, 0, 0, 0, 0)).stop()  # whatever is left
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m e2e.cluster", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("command", choices=["up", "down", "build", "info"])
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(os.environ.get("RLFLEET_CLUSTER_DIR", "/tmp/rlfleet-cluster")),
    )
    args = parser.parse_args(argv)
    workdir = args.workdir.resolve()
    if args.command == "build":
        ensure_built()
        return 0
    if args.command == "info":
        print(json.dumps({"bin": str(bin_dir()), "tools": str(tools_dir()), "built": binaries_ready(),
                          "kubeconfig": str(workdir / "kubeconfig")}, indent=2))  # fmt: skip
        return 0
    return _cmd_up(workdir) if args.command == "up" else _cmd_down(workdir)


if __name__ == "__main__":
    sys.exit(main())
