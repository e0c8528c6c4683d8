"""Fleet pause fan-out vs replica count, on the real local cluster.

    python -m bench.fleet_bench [--quick] [--sizes 1,4,16,64]

For each N: an InferencePool of N light replicas (`runner: synthetic`: the real
API server, ZMQ channel, scheduler, block manager and pause state machine,
with the model runner swapped), one streaming client per replica, then:
`kubectl patch` paused=true → condition Paused=True; paused=false → Paused=False
(times seen by polling the API every 20 ms). Then, in the same run, over the same
replicas under the same load, a plain sequential loop of `POST /v1/pause` (reject
+ full pause per replica, one after another) and `POST /v1/resume`: the ratio of
that loop to the operator's concurrent fan-out is the figure. Each replica
simulates a decode step of `--step-ms`, so every pause waits for a step in
flight, as on a real GPU fleet.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import console, print_table, write_result
from e2e.cluster import LocalCluster, ensure_built
from e2e.fleet import Fleet
from e2e.load import StreamingLoad

POOL_PATH = "/apis/rlfleet.io/v1alpha1/namespaces/default/inferencepools/{}"


def wait_condition(api, name: str, ctype: str, status: str, timeout: float = 300) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        obj = api.get(POOL_PATH.format(name))
        gen = obj["metadata"]["generation"]
        for c in obj.get("status", {}).get("conditions", []):
            if (
                c["type"] == ctype
                and c["status"] == status
                and c.get("observedGeneration", gen) >= gen
            ):
                return time.monotonic()
        time.sleep(0.02)
    raise TimeoutError(f"{name}: {ctype}={status} not reached in {timeout}s")


def sequential_loop(replicas, token: str) -> tuple[float, float]:
    """Pause every replica one after another (reject, then full pause), then resume them the same way."""
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(headers=auth, timeout=60) as c:
        t0 = time.perf_counter()
        for r in replicas:
            c.post(r.url + "/v1/pause", json={"stage": "reject"}).raise_for_status()
            c.post(r.url + "/v1/pause", json={}).raise_for_status()
        pause_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for r in replicas:
            c.post(r.url + "/v1/resume").raise_for_status()
        resume_s = time.perf_counter() - t0
    return pause_s, resume_s


def measure(fleet: Fleet, n: int, step_ms: float) -> dict:
    name = f"fleet-{n}"
    with console.status(f"[cyan]starting a pool of {n} light replicas…"):
        t0 = time.monotonic()
        fleet.create_pool(
            name, n, engine_args={"runner": "synthetic", "synthetic-step-ms": step_ms}
        )
        reps = fleet.wait_replicas_ready(name, n, timeout=600)
        startup_s = time.monotonic() - t0
    api = fleet.cluster.api()
    try:
        # 1. the operator: kubectl patch → Paused=True, under one stream per replica
        load = StreamingLoad(reps, clients_per_replica=1, max_tokens=900).start()
        load.wait_streaming(min_tokens_per_replica=3)
        t_patch = fleet.patch(name, {"paused": True})
        t_paused = wait_condition(api, name, "Paused", "True")
        report = load.stop()
        last = fleet.get(name)["status"]["lastPause"]
        t_patch2 = fleet.patch(name, {"paused": False})
        t_resumed = wait_condition(api, name, "Paused", "False")
        # 2. the same replicas under the same load, paused by a plain sequential loop
        load2 = StreamingLoad(reps, clients_per_replica=1, max_tokens=900).start()
        load2.wait_streaming(min_tokens_per_replica=3)
        seq_pause_s, seq_resume_s = sequential_loop(reps, fleet.control_token(name))
        load2.stop()
    finally:
        api.close()
    by = report.by_outcome()
    row = {
        "replicas": n,
        "synthetic_step_ms": step_ms,
        "startup_s": startup_s,
        "patch_to_paused_s": t_paused - t_patch,
        "operator_fanout_s": last.get("durationSeconds"),
        "slowest_replica_pause_s": last.get("maxReplicaSeconds"),
        "patch_to_resumed_s": t_resumed - t_patch2,
        "sequential_pause_s": seq_pause_s,
        "sequential_resume_s": seq_resume_s,
        "aborted": last.get("abortedRequests"),
        "partial_tokens": last.get("partialTokens"),
        "client_aborted_tokens": report.tokens("aborted"),
        "failed_requests": by["failed"],
    }
    fanout = row["operator_fanout_s"]
    row["sequential_over_fanout"] = seq_pause_s / fanout if fanout else None
    with console.status(f"[cyan]deleting the {n}-replica pool…"):
        fleet.delete_pool(name)
    return row


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="N = 1, 4, 16")
    ap.add_argument("--sizes", default=None, help="comma-separated replica counts")
    ap.add_argument(
        "--step-ms",
        type=float,
        default=200.0,
        help="simulated decode step of the light replicas (a large model under load): a pause waits for the step in flight",
    )
    args = ap.parse_args(argv)
    sizes = (
        [int(x) for x in args.sizes.split(",")]
        if args.sizes
        else ([1, 4, 16] if args.quick else [1, 4, 16, 64])
    )
    console.rule("fleet pause fan-out")
    ensure_built()
    rows = []
    with tempfile.TemporaryDirectory(prefix="rlfleet-fleet-") as tmp:
        cluster = LocalCluster(Path(tmp) / "k8s", log=lambda m: console.print(f"[dim]{m}[/dim]"))
        with cluster:
            fleet = Fleet(cluster)
            fleet.install_operator(resync_seconds=2)
            for n in sizes:
                rows.append(measure(fleet, n, args.step_ms))
                r = rows[-1]
                console.print(
                    f"N={n}: patch→Paused {r['patch_to_paused_s']:.3f}s, fan-out {r['operator_fanout_s']:.3f}s, sequential {r['sequential_pause_s']:.3f}s"
                )
    print_table(
        "fleet pause vs replica count (seconds)",
        [
            "replicas",
            "patch→Paused",
            "fan-out",
            "slowest replica",
            "sequential loop",
            "seq / fan-out",
            "patch→resumed",
            "aborted",
            "partial tok (op/clients)",
            "failed",
        ],
        [
            [
                r["replicas"],
                r["patch_to_paused_s"],
                r["operator_fanout_s"],
                r["slowest_replica_pause_s"],
                r["sequential_pause_s"],
                r["sequential_over_fanout"],
                r["patch_to_resumed_s"],
                r["aborted"],
                f"{r['partial_tokens']}/{r['client_aborted_tokens']}",
                r["failed_requests"],
            ]
            for r in rows
        ],
    )
    out = {"results": rows}
    write_result("fleet", out)
    return out


if __name__ == "__main__":
    main()
