"""Where a decode step's GPU time goes: each op of the 0.5B-shaped model timed alone.

For batch B after a `--ctx`-token prefill: every op of one layer (and the head) is captured
20 times into a CUDA graph and the graph replayed, so the time per op excludes Python and
launch gaps (what a CUDA-graph step pays). Also the whole decode forward captured once and
replayed (GPU time of a step without the host's planning and copies).

    python bench/gpu/op_profile.py --model /tmp/qwen05b --out $OUT/ops.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import paddle
from decode_bench import Batch, sync
from paddle.device.cuda.graphs import CUDAGraph

from engine_pod.model.paddle_runner import PaddleModelRunner
from engine_pod.model.step_plan import plan_step


def graph_us(fn, reps: int = 20, replays: int = 10) -> float:
    fn()
    sync()
    g = CUDAGraph()
    g.capture_begin()
    keep = [fn() for _ in range(reps)]
    g.capture_end()
    for _ in range(3):
        g.replay()
    sync()
    t0 = time.perf_counter()
    for _ in range(replays):
        g.replay()
    sync()
    dt = (time.perf_counter() - t0) / replays / reps * 1e6
    g.reset()
    del keep
    return round(dt, 2)


def profile(runner: PaddleModelRunner, b: int, ctx: int) -> dict:
    ops, cfg, w = runner.ops, runner.config, runner.weights
    eps = cfg.rms_norm_eps
    bt = Batch(runner, b, ctx, 8)
    first, _ = bt.prefill()
    plan = plan_step(bt.work(first, ctx, 1), bt.bs, runner.cache.num_blocks, cfg.vocab_size,
                     cfg.max_position_embeddings)  # fmt: skip
    ops.refresh_stream()
    st = ops.begin_step(cfg, plan, runner.decoder.rope, bt.bs)
    lw = w.layers[0]
    kc, vc = runner.cache.k[0], runner.cache.v[0]
    rng = np.random.default_rng(0)
    x = ops.to_device(rng.standard_normal((b, cfg.hidden_size)).astype(np.float32), runner.dtype)
    h = ops.to_device(rng.standard_normal((b, cfg.hidden_size)).astype(np.float32), runner.dtype)
    qkv = ops.linear(h, lw.qkv)
    q = ops.qkv_rope_cache(qkv, lw.qkv_bias, st, kc, vc)
    attn = ops.attention(q, kc, vc, st)
    gu = ops.linear(h, lw.gate_up)
    act = ops.silu_mul(gu)
    logits = ops.logits(h, w.lm_head)
    per_layer = {
        "add_rms_norm": graph_us(lambda: ops.add_rms_norm(x, h, lw.post_norm, eps)),
        "gemm_qkv": graph_us(lambda: ops.linear(h, lw.qkv)),
        "qkv_rope_cache": graph_us(lambda: ops.qkv_rope_cache(qkv, lw.qkv_bias, st, kc, vc)),
        "attention": graph_us(lambda: ops.attention(q, kc, vc, st)),
        "gemm_o": graph_us(lambda: ops.linear(attn, lw.o)),
        "gemm_gate_up": graph_us(lambda: ops.linear(h, lw.gate_up)),
        "silu_mul": graph_us(lambda: ops.silu_mul(gu)),
        "gemm_down": graph_us(lambda: ops.linear(act, lw.down)),
    }
    head = {
        "embed": graph_us(lambda: ops.embed(w.embed, st)),
        "final_norm": graph_us(lambda: ops.final_norm(x, h, w.norm, st, eps)),
        "lm_head_gemm": graph_us(lambda: ops.logits(h, w.lm_head)),
        "argmax": graph_us(lambda: ops.argmax(logits)),
    }
    fused = {}
    if ops.fused_layers(st, runner.dtype):  # the skinny GEMMs with norm / SiLU / residual
        fused = {
            "norm+qkv": graph_us(lambda: ops.norm_linear(x, lw.input_norm, lw.qkv, eps)),
            "o+residual": graph_us(lambda: ops.linear_residual(x, attn, lw.o)),
            "norm+gate_up+silu": graph_us(
                lambda: ops.norm_linear_silu(x, lw.post_norm, lw.gate_up, eps)
            ),
            "down+residual": graph_us(lambda: ops.linear_residual(x, act, lw.down)),
        }
    keep = ops.attn_version
    ops.attn_version = "v1"
    per_layer_v1 = graph_us(lambda: ops.attention(q, kc, vc, st))
    ops.attn_version = keep
    layer_sum = per_layer["add_rms_norm"] * 2 + sum(
        v for k, v in per_layer.items() if k != "add_rms_norm"
    )
    est = cfg.num_layers * layer_sum + sum(head.values())
    # the whole decode forward, captured once (replay only: no host planning / copies)
    dec = runner.decoder
    full = graph_us(
        lambda: ops.argmax(dec.forward_logits(w, runner.cache, plan, st)), reps=1, replays=20
    )
    return {"batch": b, "ctx": ctx, "per_layer_us": per_layer, "head_us": head,
            "attention_v1_us": per_layer_v1, "fused_us": fused, "layer_sum_us": round(layer_sum, 1),
            "step_estimate_us": round(est, 1), "forward_graph_replay_us": full}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="/tmp/qwen05b")
    ap.add_argument("--out", default=None)
    ap.add_argument("--batches", default="1,16,64,128")
    ap.add_argument("--ctx", type=int, default=512)
    args = ap.parse_args()
    runner = PaddleModelRunner(args.model, device="gpu")
    res = {"device": paddle.device.cuda.get_device_name(), "rows": []}
    for b in [int(v) for v in args.batches.split(",")]:
        try:
            row = profile(runner, b, args.ctx)
        except Exception as e:
            import traceback

            traceback.print_exc()
            row = {"batch": b, "error": f"{type(e).__name__}: {e}"[:400]}
        print(json.dumps(row), flush=True)
        res["rows"].append(row)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
