"""The main job: a pool of engine pods paused under load on a real local cluster, weights synced, resumed.

    python -m e2e.demo [--replicas 3] [--keep]

Brings up etcd + kube-apiserver + controller-manager + scheduler + the local
node agent, `helm install`s rlfleet, creates an InferencePool of Paddle engine
replicas, streams completions at every replica, then does what an RL trainer
does between rollouts — with kubectl only:

    kubectl patch ipool rollout --type=merge -p '{"spec":{"paused":true}}'
    (wait for Paused=True)
    kubectl patch ipool rollout --type=merge -p '{"spec":{"weights":{...}}}'
    (wait for WeightsSynced=True)
    kubectl patch ipool rollout --type=merge -p '{"spec":{"paused":false}}'

and prints what happened: pause time fleet-wide and per replica, requests
aborted with their partial tokens, tokens preserved, KV blocks freed, weights.
Exits non-zero if any request was lost or a figure does not add up.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from e2e.cluster import LocalCluster, ensure_built
from e2e.fleet import POOL_RESOURCE, Fleet
from e2e.load import StreamingLoad

console = Console(width=120)
POOL = "rollout"


def step(msg: str):
    return console.status(f"[bold cyan]{msg}…", spinner="dots")


def greedy_probe(replica_url: str, token: str | None = None) -> list[int]:
    body = {
        "prompt": "An RL policy after one more step says",
        "max_tokens": 16,
        "temperature": 0,
        "ignore_eos": True,
    }
    r = httpx.post(replica_url + "/v1/completions", json=body, timeout=60)
    r.raise_for_status()
    return r.json()["choices"][0]["token_ids"]


def run(replicas: int, keep: bool, workdir: Path) -> int:
    problems: list[str] = []
    t_start = time.monotonic()
    with step("building / checking the Kubernetes 1.20 binaries (cached after the first run)"):
        ensure_built()
    cluster = LocalCluster(workdir / "cluster", log=lambda m: console.print(f"[dim]{m}[/dim]"))
    try:
        with step(
            "starting etcd, kube-apiserver, controller-manager, scheduler and the node agent"
        ):
            cluster.start()
        fleet = Fleet(cluster)
        with step("helm install rlfleet (CRD, RBAC, operator Deployment)"):
            t_helm = fleet.install_operator()
        console.print(f"[green]✓[/green] operator installed with Helm in {t_helm:.1f}s")

        ckpt = workdir / "ckpt" / "step-1"
        subprocess.run(
            [sys.executable, "-m", "engine_pod.model.tiny", "--out", str(ckpt), "--seed", "1"],
            check=True,
            capture_output=True,
        )

        with step(f"creating InferencePool/{POOL} with {replicas} Paddle engine replicas"):
            fleet.create_pool(POOL, replicas, engine_args={"max-num-seqs": 4, "num-kv-blocks": 128})
            reps = fleet.wait_replicas_ready(POOL, replicas, timeout=300)
        console.print(
            f"[green]✓[/green] {replicas} replicas ready: "
            + ", ".join(f"{r.pod}@{r.ip}" for r in reps)
        )
        console.print(cluster.kubectl("get", POOL_RESOURCE, POOL).stdout.rstrip())

        before = {r.pod: greedy_probe(r.url) for r in reps}

        load = StreamingLoad(reps, clients_per_replica=6, max_tokens=400).start()
        with step("streaming rollouts on every replica (4 running + 2 waiting each)"):
            load.wait_streaming(min_tokens_per_replica=20)
            time.sleep(0.5)

        console.print(
            f'$ kubectl patch ipool {POOL} --type=merge -p \'{{"spec":{{"paused":true}}}}\''
        )
        t_patch = fleet.patch(POOL, {"paused": True})
        with step("waiting for condition Paused=True"):
            t_paused = fleet.wait_condition(POOL, "Paused", timeout=120)
        report = load.stop()
        pool = fleet.get(POOL)
        last = pool["status"]["lastPause"]
        console.print(f"[green]✓[/green] Paused=True {t_paused - t_patch:.3f}s after the patch")

        token = fleet.control_token(POOL)
        auth = {"Authorization": f"Bearer {token}"}
        per_replica = {p["pod"]: p for p in last.get("perReplica", [])}
        kv_after = {}
        for r in reps:
            st = httpx.get(r.url + "/v1/is_paused", headers=auth, timeout=10).json()
            if not st["is_paused"]:
                problems.append(f"{r.pod} is not paused: {st}")
            kv_after[r.pod] = httpx.get(r.url + "/v1/stats", headers=auth, timeout=10).json()[
                "kv_used_blocks"
            ]

        console.print(
            f'$ kubectl patch ipool {POOL} --type=merge -p \'{{"spec":{{"weights":{{"version":"step-1","path":"{ckpt}"}}}}}}\''
        )
        t_w = fleet.patch(POOL, {"weights": {"version": "step-1", "path": str(ckpt)}})
        with step("waiting for condition WeightsSynced=True"):
            t_synced = fleet.wait_condition(POOL, "WeightsSynced", timeout=120)
        console.print(f"[green]✓[/green] WeightsSynced=True {t_synced - t_w:.3f}s after the patch")

        console.print(
            f'$ kubectl patch ipool {POOL} --type=merge -p \'{{"spec":{{"paused":false}}}}\''
        )
        t_r = fleet.patch(POOL, {"paused": False})
        with step("waiting for condition Paused=False"):
            t_resumed = fleet.wait_condition(POOL, "Paused", status="False", timeout=120)
        after = {r.pod: greedy_probe(r.url) for r in reps}
        console.print(f"[green]✓[/green] resumed {t_resumed - t_r:.3f}s after the patch")
        console.print(cluster.kubectl("get", POOL_RESOURCE, POOL).stdout.rstrip())

        # -- the figures ----------------------------------------------------------------
        by = report.by_outcome()
        aborted_tokens = report.tokens("aborted")
        t = Table(title="per replica (engine figures from status.lastPause.perReplica)")
        for col in (
            "replica",
            "pause (s)",
            "aborted",
            "partial tokens",
            "blocks freed / total",
            "KV used after",
            "weights",
            "output changed",
        ):
            t.add_column(col, justify="right")
        for r in reps:
            p = per_replica.get(r.pod, {})
            st = httpx.get(r.url + "/v1/is_paused", headers=auth, timeout=10).json()
            changed = before[r.pod] != after[r.pod]
            if not changed:
                problems.append(f"{r.pod}: greedy output did not change after the weight sync")
            t.add_row(
                r.pod, f"{p.get('durationSeconds', float('nan')):.4f}", str(p.get("abortedRequests")),
                str(p.get("partialTokens")), f"{p.get('freedBlocks')}/{p.get('totalBlocks')}", str(kv_after[r.pod]),
                st["weights_version"], "yes" if changed else "NO",
            )  # fmt: skip
        console.print(t)

        s = Table(title="fleet")
        s.add_column("figure")
        s.add_column("value", justify="right")
        rows = [
            ("kubectl patch → Paused=True (s)", f"{t_paused - t_patch:.3f}"),
            ("operator fan-out, reject + pause (s)", f"{last.get('durationSeconds', 0):.3f}"),
            ("slowest replica pause (s)", f"{last.get('maxReplicaSeconds', 0):.4f}"),
            ("requests aborted by the pause", str(last.get("abortedRequests"))),
            (
                "partial tokens (operator / clients received)",
                f"{last.get('partialTokens')} / {aborted_tokens}",
            ),
            ("KV blocks freed", str(last.get("freedBlocks"))),
            (
                "requests completed / aborted / refused (503) / failed",
                f"{by['completed']} / {by['aborted']} / {by['refused']} / {by['failed']}",
            ),
            ("kubectl patch → WeightsSynced=True (s)", f"{t_synced - t_w:.3f}"),
            ("kubectl patch → resumed (s)", f"{t_resumed - t_r:.3f}"),
            ("weights version", str(fleet.get(POOL)["status"].get("weightsVersion"))),
            ("whole demo (s)", f"{time.monotonic() - t_start:.1f}"),
        ]
        for k, v in rows:
            s.add_row(k, v)
        console.print(s)

        if by["failed"]:
            problems.append(
                f"{by['failed']} requests failed: "
                + "; ".join(r.detail for r in report.records if r.outcome == "failed")[:500]
            )
        if last.get("partialTokens") != aborted_tokens:
            problems.append(
                f"tokens lost: operator counted {last.get('partialTokens')} partial tokens, clients received {aborted_tokens}"
            )
        if last.get("abortedRequests") != by["aborted"]:
            problems.append(
                f"operator counted {last.get('abortedRequests')} aborted requests, clients saw {by['aborted']}"
            )
        if any(kv_after.values()):
            problems.append(f"KV blocks still used after pause: {kv_after}")
        if keep:
            console.print(
                f"[yellow]--keep: cluster left running; export KUBECONFIG={cluster.kubeconfig}[/yellow]"
            )
            return 1 if problems else 0
    finally:
        if not keep:
            with step("tearing down"):
                cluster.stop()
    for p in problems:
        console.print(f"[red]✗ {p}[/red]")
    if not problems:
        console.print(
            "[bold green]✓ every request accounted for, every token preserved, every block freed[/bold green]"
        )
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="leave the cluster running at the end")
    ap.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where the cluster keeps its files (default: a temp dir)",
    )
    args = ap.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="rlfleet-demo-"))
    try:
        return run(args.replicas, args.keep, workdir)
    except subprocess.CalledProcessError as e:
        console.print(
            f"[red]✗ {' '.join(map(str, e.cmd[:1] + e.cmd[3:]))} failed ({e.returncode}):[/red]\n{e.stderr or ''}{e.stdout or ''}"
        )
        console.print(f"[dim]cluster logs under {workdir}[/dim]")
        return 1


if __name__ == "__main__":
    sys.exit(main())
