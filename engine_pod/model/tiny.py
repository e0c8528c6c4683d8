"""The embedded default model: a tiny random Qwen2, generated deterministically on first use.

It is saved in ordinary Hugging Face layout, so the real loading code always runs.
`python -m engine_pod.model.tiny --out DIR --seed N` writes a checkpoint; a different
seed gives different weights with the same config and tokenizer ("new policy weights"
for weight-sync demos).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

from engine_pod.model.hf_config import ModelConfig
from engine_pod.model.random_model import random_config, write_model

TINY_NAME = "tiny-qwen2"


def tiny_config() -> ModelConfig:
    """hidden 64, 2 layers, 4 heads / 2 kv heads of 16, intermediate 128, byte vocab."""
    return random_config(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128)


def cache_root() -> str:
    """`$RLFLEET_CACHE` or `~/.cache/rlfleet`."""
    return os.environ.get("RLFLEET_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "rlfleet"
    )


def write_atomically(out_dir: str, seed: int) -> str:
    """Generate into a temp dir beside `out_dir`, then rename; a concurrent winner is kept."""
    parent = os.path.dirname(os.path.abspath(out_dir)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(out_dir) + "-", dir=parent)
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        write_model(tmp, tiny_config(), seed)
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if not os.path.exists(os.path.join(out_dir, "config.json")):
                raise  # not a lost race: a real error
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def ensure_tiny_model(dir: str | None = None, seed: int = 0) -> str:
    """Path of the tiny model for `seed`, generating it once if missing (process-safe)."""
    out = dir or os.path.join(cache_root(), "models", f"{TINY_NAME}-seed{seed}")
    if os.path.exists(os.path.join(out, "config.json")) and os.path.exists(
        os.path.join(out, "model.safetensors")
    ):
        return out
    return write_atomically(out, seed)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Write the tiny random Qwen2 checkpoint (HF layout).")
    ap.add_argument("--out", required=True, help="output directory (created; must not exist)")
    ap.add_argument("--seed", type=int, default=0, help="weights seed (same seed = same bytes)")
    args = ap.parse_args(argv)
    if os.path.exists(args.out) and os.listdir(args.out):
        ap.error(f"{args.out} exists and is not empty")
    if os.path.isdir(args.out):
        os.rmdir(args.out)
    print(write_atomically(args.out, args.seed))


if __name__ == "__main__":
    main()
