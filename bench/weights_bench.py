"""Weight sync: seconds for `/v1/update_weights` of 50 MB, 500 MB and 2 GB checkpoints vs reading the same files.

    python -m bench.weights_bench [--quick]

For each size: a random Qwen2-architecture checkpoint pair (serving + new, same
shape) on local disk; a real Paddle engine serves the first; the benchmark
pauses it and times `update_weights` to the second (load, validate, swap), and
times `cat files > /dev/null` of the same files just before (page cache as warm
for both). The ratio says how close the engine's load is to the read limit.
The engine's own phase timings (`phases` in the answer) and the engine process's
peak resident memory during the update (Linux: VmHWM, reset just before) come
with each row, and "again": a second update, back to the first checkpoint, which
reuses the memory the first one freed (on this VM, first-touching fresh memory
costs several times more than reading the file).
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import console, print_table, write_result
from engine_pod.launcher import EnginePod
from engine_pod.model.random_model import make_random_model

# name → shape (hidden, layers, heads, kv_heads, intermediate, vocab, tied)
SHAPES = {
    "50MB": (512, 3, 8, 2, 1536, 4096, True),
    "500MB": (896, 6, 14, 2, 4864, 32000, True),
    "2GB": (896, 24, 14, 2, 4864, 151936, True),  # the Qwen2-0.5B shape, float32
}


# the engine's `phases` keys, in the order shown (hash_s runs on a second thread, within read_s)
PHASES = ["verify_s", "read_s", "hash_s", "build_s", "swap_s"]


def dir_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.iterdir() if f.is_file())


def cat_seconds(d: Path) -> float:
    files = sorted(str(f) for f in d.glob("*.safetensors"))
    t0 = time.perf_counter()
    subprocess.run(["cat", *files], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def status_mb(pid: int, key: str) -> float:
    """A `/proc/PID/status` memory figure (VmRSS, VmHWM) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def engine_pid(pod: EnginePod) -> int:
    """The process holding the model: the largest resident one of the pod's tree."""
    assert pod.proc is not None
    pids = [pod.proc.pid, *descendants(pod.proc.pid)]
    return max(pids, key=lambda p: status_mb(p, "VmRSS"))


def measure(name: str, root: Path) -> dict:
    hidden, layers, heads, kv, inter, vocab, tied = SHAPES[name]
    kw = dict(
        hidden=hidden,
        layers=layers,
        heads=heads,
        kv_heads=kv,
        intermediate=inter,
        vocab=vocab,
        tie_word_embeddings=tied,
    )
    with console.status(f"[cyan]writing two {name} checkpoints…"):
        serving = Path(make_random_model(str(root / f"{name}-a"), seed=1, **kw))
        new = Path(make_random_model(str(root / f"{name}-b"), seed=2, **kw))
    size = dir_bytes(new)
    with EnginePod(
        "--model", str(serving), "--max-model-len", "256", "--num-kv-blocks", "16"
    ) as pod:
        httpx.post(pod.url + "/v1/pause", json={}, timeout=60).raise_for_status()
        cat_s = min(cat_seconds(new) for _ in range(2))
        pid = engine_pid(pod)
        rss_before = status_mb(pid, "VmRSS")
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # peak RSS := current RSS
        update_s, body = timed_update(pod, new, f"{name}-b")
        peak_mb, rss_after = status_mb(pid, "VmHWM"), status_mb(pid, "VmRSS")
        # and back: the memory the first update freed is reused at once (warm pages)
        cat_seconds(serving)
        again_s, again = timed_update(pod, serving, f"{name}-a")
    gb = size / 1e9
    return {
        "size": name,
        "bytes": size,
        "update_s": update_s,
        "engine_load_s": body.get("load_s"),
        "update_gb_per_s": gb / update_s,
        "cat_s": cat_s,
        "cat_gb_per_s": gb / cat_s,
        "ratio_to_read_limit": update_s / cat_s,
        "phases": body.get("phases", {}),
        "rss_before_mb": rss_before,
        "peak_rss_mb": peak_mb,
        "rss_after_mb": rss_after,
        "update_again_s": again_s,
        "phases_again": again.get("phases", {}),
    }


def timed_update(pod: EnginePod, path: Path, version: str) -> tuple[float, dict]:
    """Seconds for `/v1/update_weights` to `path` (seen by the client), and its answer."""
    t0 = time.perf_counter()
    r = httpx.post(
        pod.url + "/v1/update_weights", json={"path": str(path), "version": version}, timeout=1800
    )
    seconds = time.perf_counter() - t0
    r.raise_for_status()
    return seconds, r.json()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="only the 50 MB and 500 MB checkpoints")
    args = ap.parse_args(argv)
    sizes = ["50MB", "500MB"] if args.quick else list(SHAPES)
    console.rule("weight sync")
    with tempfile.TemporaryDirectory(prefix="rlfleet-weights-") as tmp:
        rows = [measure(n, Path(tmp)) for n in sizes]
    print_table(
        "update_weights vs reading the files (page cache warm for both; phases: the engine's)",
        ["size", "MB", "update (s)", "cat (s)", "update / cat"]
        + [p.removesuffix("_s") for p in PHASES]
        + ["RSS MB before / peak / after", "again (s)", "again / cat"],
        [
            [r["size"], r["bytes"] / 1e6, r["update_s"], r["cat_s"], r["ratio_to_read_limit"]]
            + [f"{r['phases'][p]:.3f}" if p in r["phases"] else "—" for p in PHASES]
            + [f"{r['rss_before_mb']:.0f} / {r['peak_rss_mb']:.0f} / {r['rss_after_mb']:.0f}"]
            + [r["update_again_s"], r["update_again_s"] / r["cat_s"]]
            for r in rows
        ],
    )
    out = {"results": rows}
    write_result("weights", out)
    return out


if __name__ == "__main__":
    main()
