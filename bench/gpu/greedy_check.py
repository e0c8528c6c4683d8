"""Greedy output of `PaddleModelRunner(device="gpu")` against the CPU reference forward.

1. The tiny default model (float32): the runner is driven like the engine does it
   (chunked prefill, staggered arrivals, decode and prefill mixed in one step, shuffled
   non-contiguous block tables) and must give exactly `reference_greedy`'s tokens
   (engine_pod/model/reference.py, float64 numpy, computed here on the CPU).
2. The Qwen2-0.5B-shaped random model (`make_random_model`, bf16 checkpoint, seed 0):
   first 32 tokens of 8 prompts, run in float32 on the GPU, must equal the float64
   oracle's tokens (bench/gpu/expected_05b.json, from bench/gpu/oracle.py). The bf16 run's
   agreement is recorded too (information: bf16 rounding may flip near-ties), and the bf16
   run with the fused skinny GEMMs (decode steps) against one without them.

    python bench/gpu/greedy_check.py --out $OUT/greedy.json [--model-05b /tmp/qwen05b]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import paddle

from engine_pod.model.drive import run_paged
from engine_pod.model.loader import load_checkpoint
from engine_pod.model.paddle_runner import PaddleModelRunner
from engine_pod.model.reference import reference_greedy
from engine_pod.model.tiny import ensure_tiny_model

HERE = os.path.dirname(os.path.abspath(__file__))


def set_tf32(on: bool) -> None:
    try:
        paddle.base.core.set_cublas_switch(on)
    except AttributeError:
        pass


def agreement(got: list[list[int]], want: list[list[int]]) -> dict:
    prefix = []
    for g, w in zip(got, want, strict=True):
        k = 0
        while k < min(len(g), len(w)) and g[k] == w[k]:
            k += 1
        prefix.append(k)
    return {"equal": got == want, "matching_prefix_per_prompt": prefix,
            "tokens_equal": sum(a == b for g, w in zip(got, want, strict=True) for a, b in zip(g, w, strict=True)),
            "tokens": sum(len(w) for w in want)}  # fmt: skip


def check_tiny(device: str) -> dict:
    t0 = time.time()
    tiny = ensure_tiny_model(os.path.join(tempfile.mkdtemp(), "tiny"), seed=0)
    runner = PaddleModelRunner(tiny, device=device)
    texts = ["Hello world, this is", "Hello", "The quick brown fox jumps", "a",
             "Paged attention, 分页注意力!"]  # fmt: skip
    prompts = [runner.tokenizer.encode(t) for t in texts]
    weights = load_checkpoint(tiny)
    expected = [reference_greedy(weights, p, 32) for p in prompts]
    out: dict = {"model": "tiny-qwen2 seed 0 (float32)", "ops": runner.ops.name, "scenarios": {}}
    scenarios = {
        "chunk3_stagger2_bs4": dict(chunk=3, stagger=2, block_size=4),
        "whole_prompt_bs4": dict(rng_seed=1, block_size=4),
        "whole_prompt_bs16": dict(rng_seed=2, block_size=16),
    }
    for tf32 in (False, True):
        set_tf32(tf32)
        for name, kw in scenarios.items():
            got = run_paged(runner, prompts, 32, **kw)
            out["scenarios"][f"{name}{'_tf32' if tf32 else ''}"] = agreement(got, expected)
    set_tf32(False)
    out["equal"] = all(v["equal"] for k, v in out["scenarios"].items() if not k.endswith("_tf32"))
    out["seconds"] = round(time.time() - t0, 1)
    return out


def check_05b(device: str, model_dir: str) -> dict:
    from oracle import make_05b

    with open(os.path.join(HERE, "expected_05b.json")) as f:
        exp = json.load(f)
    t0 = time.time()
    if not os.path.exists(os.path.join(model_dir, "model.safetensors")):
        make_05b(model_dir)
    out: dict = {"model": "Qwen2-0.5B shape, random bf16 weights, seed 0",
                 "make_model_s": round(time.time() - t0, 1), "runs": {}}  # fmt: skip
    # bf16 twice: decode steps (8 rows) on the fused skinny GEMMs (the default), then with
    # them off (cuBLAS + separate kernels): the same roundings, so the same tokens expected
    for dtype, fused in (("float32", True), ("bfloat16", True), ("bfloat16", False)):
        t0 = time.time()
        runner = PaddleModelRunner(model_dir, device=device, dtype=dtype)
        if not fused:
            runner.ops.fused_gemm_rows = 0
            dtype += "_unfused"
        load_s = time.time() - t0
        t0 = time.time()
        got = run_paged(runner, exp["prompt_ids"], exp["n_new"], block_size=16)
        res = agreement(got, exp["expected"])
        res.update(load_s=round(load_s, 1), run_s=round(time.time() - t0, 1), got=got)
        out["runs"][dtype] = res
        print(
            f"0.5B {dtype}: equal={res['equal']} prefix={res['matching_prefix_per_prompt']}",
            flush=True,
        )
        del runner
        gc.collect()
    out["equal"] = out["runs"]["float32"]["equal"]
    runs = out["runs"]
    out["bf16_fused_vs_unfused"] = agreement(
        runs["bfloat16"]["got"], runs["bfloat16_unfused"]["got"]
    )
    print(f"0.5B bf16 fused = unfused: {out['bf16_fused_vs_unfused']['equal']}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--device", default="gpu")
    ap.add_argument("--model-05b", default="/tmp/qwen05b")
    ap.add_argument("--skip-05b", action="store_true")
    args = ap.parse_args()
    set_tf32(False)
    res: dict = {"device": paddle.device.cuda.get_device_name() if args.device != "cpu" else "cpu",
                 "paddle": paddle.__version__}  # fmt: skip
    res["tiny"] = check_tiny(args.device)
    print(f"tiny: equal={res['tiny']['equal']} "
          f"{ {k: v['equal'] for k, v in res['tiny']['scenarios'].items()} }", flush=True)  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    if not args.skip_05b:
        try:
            res["qwen05b"] = check_05b(args.device, args.model_05b)
        except Exception as e:  # keep the tiny result
            import traceback

            traceback.print_exc()
            res["qwen05b"] = {"error": f"{type(e).__name__}: {e}"}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
