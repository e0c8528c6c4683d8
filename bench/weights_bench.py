"""Weight sync: seconds for `/v1/update_weights` of 50 MB, 500 MB and 2 GB checkpoints vs reading the same files.

    python -m bench.weights_bench [--quick]

For each size: a random Qwen2-architecture checkpoint pair (serving + new, same
shape) on local disk; a real Paddle engine serves the first; the benchmark
pauses it and times `update_weights` to the second (load, validate, swap), and
times `cat files > /dev/null` of the same files just before (page cache as warm
for both). The ratio says how close the engine's load is to the read limit.
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


def dir_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.iterdir() if f.is_file())


def cat_seconds(d: Path) -> float:
    files = sorted(str(f) for f in d.glob("*.safetensors"))
    t0 = time.perf_counter()
    subprocess.run(["cat", *files], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


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
        t0 = time.perf_counter()
        r = httpx.post(
            pod.url + "/v1/update_weights",
            json={"path": str(new), "version": f"{name}-b"},
            timeout=1800,
        )
        update_s = time.perf_counter() - t0
        r.raise_for_status()
        body = r.json()
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
    }


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
        "update_weights vs reading the files (page cache warm for both)",
        ["size", "MB", "update (s)", "GB/s", "cat (s)", "cat GB/s", "update / cat"],
        [
            [
                r["size"],
                r["bytes"] / 1e6,
                r["update_s"],
                r["update_gb_per_s"],
                r["cat_s"],
                r["cat_gb_per_s"],
                r["ratio_to_read_limit"],
            ]
            for r in rows
        ],
    )
    out = {"results": rows}
    write_result("weights", out)
    return out


if __name__ == "__main__":
    main()
