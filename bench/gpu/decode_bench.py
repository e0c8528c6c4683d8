"""Decode step time of the Qwen2-0.5B shape (random bf16 weights) on the GPU runner.

For each batch size B: B sequences, each prefilled with a `--ctx`-token random prompt, then
decode steps of all B together through `PaddleModelRunner.execute` (the engine's call:
host planning, index upload, forward, sampling on the device, token ids back), eagerly
(the runner's graphs off) and with the runner's own CUDA graphs (engine_pod/model/
cuda_graphs.py; `--graphs`); the graph steps' tokens are checked against the eager ones.
Reported: median step time, tokens/s, and the step as a ratio to the memory-bandwidth
limit (weights + KV bytes read per step ÷ bandwidth), for the datasheet bandwidth
(`--hbm-tbs`, H200 4.8 TB/s) and the device-to-device copy bandwidth measured here first.
"lookahead": the graph steps as the engine's look-ahead loop runs them (step k + 1 launched,
its inputs fed from step k's ids on the device, before step k's tokens are waited for);
`lookahead_x_formula` is that step ÷ (bytes ÷ 3.35 TB/s), the issue's formula.
"graph GPU" = the captured step replayed back to back (GPU time alone); the rest of a
graph step is the host. Time to first token: one `--ctx`-token prompt prefilled and its
first token sampled, at batch 1. `--sampling`: also the graph step with every row sampled
(temperature 0.8, top-p 0.9, seeded) instead of greedy.

    python bench/gpu/decode_bench.py --model /tmp/qwen05b --out $OUT/bench.json [--graphs]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import paddle

from engine_pod.model.base import FEED_TOKEN, SamplingParams, SeqWork
from engine_pod.model.paddle_runner import PaddleModelRunner
from engine_pod.model.step_plan import plan_step

GREEDY = SamplingParams(temperature=0.0)
SAMPLED = SamplingParams(temperature=0.8, top_p=0.9, seed=1)


def weight_bytes(runner: PaddleModelRunner) -> int:
    """Bytes of weights a decode step reads (every layer, final norm, lm_head; not the
    embedding table, of which it reads B rows)."""
    w = runner.weights
    n = 0
    for lw in w.layers:
        for t in (
            lw.input_norm,
            lw.qkv,
            lw.qkv_bias,
            lw.o,
            lw.o_bias,
            lw.post_norm,
            lw.gate_up,
            lw.down,
        ):
            if t is not None:
                n += int(np.prod(t.shape))
    n += int(np.prod(w.norm.shape)) + int(np.prod(w.lm_head.shape))
    return n * (4 if runner.dtype == "float32" else 2)


def kv_bytes(runner: PaddleModelRunner, total_ctx: int) -> int:
    c = runner.config
    return (
        total_ctx
        * c.num_layers
        * 2
        * c.num_kv_heads
        * c.head_dim
        * (4 if runner.dtype == "float32" else 2)
    )


def sync() -> None:
    paddle.device.cuda.synchronize()


class Batch:
    def __init__(
        self, runner: PaddleModelRunner, b: int, ctx: int, max_steps: int, bs: int = 16
    ) -> None:
        self.runner, self.b, self.ctx, self.bs = runner, b, ctx, bs
        self.need = math.ceil((ctx + max_steps + 1) / bs)
        runner.allocate_kv_cache(b * self.need + 1, bs)
        self.tables = [list(range(i * self.need, (i + 1) * self.need)) for i in range(b)]
        rng = np.random.default_rng(b)
        self.prompts = rng.integers(0, 256, (b, ctx)).tolist()

    def prefill(self, max_tokens: int = 8192) -> tuple[list[int], float]:
        """Prefill every sequence (whole prompts, several per step); (first tokens, seconds)."""
        first: dict[str, int] = {}
        sync()
        t0 = time.perf_counter()
        per = max(1, max_tokens // self.ctx)
        for g in range(0, self.b, per):
            batch = [SeqWork(f"s{i}", self.prompts[i], 0, self.tables[i], True, GREEDY, 0)
                     for i in range(g, min(self.b, g + per))]  # fmt: skip
            first.update(self.runner.execute(batch))
        dt = time.perf_counter() - t0
        return [first[f"s{i}"] for i in range(self.b)], dt

    def work(self, last: list[int], pos: int, k: int, sp: SamplingParams = GREEDY) -> list[SeqWork]:
        """The step's rows as the engine's scheduler hands them: each with a copy of its block
        table, which covers exactly the positions written so far (blocks are allocated as
        the sequence grows)."""
        n = pos // self.bs + 1
        return [
            SeqWork(f"s{i}", [last[i]], pos, self.tables[i][:n], True, sp, k) for i in range(self.b)
        ]


def decode(
    bt: Batch, first: list[int], steps: int, sp: SamplingParams = GREEDY
) -> tuple[list[float], list[list[int]]]:
    """`steps` decode steps of the whole batch through `runner.execute`: (seconds, tokens)."""
    last, times, toks = list(first), [], []
    for k in range(steps):
        t0 = time.perf_counter()
        res = bt.runner.execute(bt.work(last, bt.ctx + k, k + 1, sp))
        times.append(time.perf_counter() - t0)
        last = [res[f"s{i}"] for i in range(bt.b)]
        toks.append(last)
    return times, toks


def decode_lookahead(
    bt: Batch, first: list[int], steps: int
) -> tuple[list[float], list[list[int]]]:
    """As `decode` with graphs, but as the engine's look-ahead loop runs it: step k + 1 is
    launched (its input ids fed on the device from step k's) before step k's tokens are
    waited for, so the host's part overlaps the GPU's. (seconds between tokens, tokens)"""
    r = bt.runner
    wait = r.launch(bt.work(first, bt.ctx, 1))
    assert wait is not None, "not a graph step"
    times, toks, t0 = [], [], time.perf_counter()
    for k in range(1, steps + 1):
        ahead = None
        if k < steps:
            ahead = r.launch(bt.work([FEED_TOKEN] * bt.b, bt.ctx + k, k + 1), feed=True)
            assert ahead is not None, "look-ahead launch refused"
        res = wait()
        t1 = time.perf_counter()
        times.append(t1 - t0)
        t0 = t1
        toks.append([res[f"s{i}"] for i in range(bt.b)])
        wait = ahead
    return times, toks


def graph_gpu_ms(runner: PaddleModelRunner, reps: int = 50) -> float:
    """GPU time of one replay of the most recently used graph (back-to-back replays)."""
    g = max(runner.graphs.graphs.values(), key=lambda g: int(g.ids.shape[0]))
    g.graph.replay()
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        g.graph.replay()
    sync()
    return (time.perf_counter() - t0) / reps * 1e3


def host_breakdown(bt: Batch, last: list[int], pos: int, reps: int = 30) -> dict:
    """Median µs of each host part of a graph step (the runner's own path, timed piece by
    piece): packing the batch, the copy in, the replay call, waiting for the GPU, ids back."""
    from engine_pod.model.cuda_graphs import pack_decode

    r = bt.runner
    graphs, cfg = r.graphs, r.config
    batch = bt.work(last, pos, 1)
    parts: dict[str, list[float]] = {
        k: [] for k in ("pack", "copy_in", "replay", "gpu_wait", "ids_back")
    }
    for _ in range(reps):
        t0 = time.perf_counter()
        buf, key = pack_decode(batch, r.cache.block_size, graphs.scratch, cfg.vocab_size,
                               cfg.max_position_embeddings, graphs.buckets)  # fmt: skip
        t1 = time.perf_counter()
        g = graphs.graphs[key]
        graphs.ops.refresh_stream()
        graphs.ops.copy_to_device(g.meta, buf)
        t2 = time.perf_counter()
        g.graph.replay()
        t3 = time.perf_counter()
        sync()
        t4 = time.perf_counter()
        _ = g.ids.numpy()[: len(batch)].tolist()
        t5 = time.perf_counter()
        for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            parts[k].append(v)
    return {f"host_{k}_us": round(statistics.median(v) * 1e6, 1) for k, v in parts.items()}


def copy_bandwidth(ops, nbytes: int = 2 << 30, reps: int = 10) -> float:
    """Device-to-device copy bandwidth, bytes read + written per second."""
    a = paddle.empty([nbytes // 2], dtype="bfloat16")
    b = paddle.empty([nbytes // 2], dtype="bfloat16")
    ops.refresh_stream()
    ops.copy_into(b, a)
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        ops.copy_into(b, a)
    sync()
    return 2 * nbytes * reps / (time.perf_counter() - t0)


def attention_us(bt: Batch, last: list[int], k: int, reps: int = 50) -> dict:
    """Wall µs per paged-attention call (one layer, this batch's decode step), v1 … v5."""
    r = bt.runner
    ops, cfg = r.ops, r.config
    plan = plan_step(bt.work(last, bt.ctx + k, k + 1), bt.bs, r.cache.num_blocks, cfg.vocab_size,
                     cfg.max_position_embeddings)  # fmt: skip
    st = ops.begin_step(cfg, plan, r.decoder.rope, bt.bs)
    qn = np.random.default_rng(0).standard_normal((bt.b, cfg.num_heads, cfg.head_dim))
    q = ops.to_device(qn.astype(np.float32), r.dtype)
    kc, vc = r.cache.k[0], r.cache.v[0]
    out = {}
    keep = ops.attn_version
    for ver in ("v1", "v2", "v3", "v4", "v5"):
        ops.attn_version = ver
        ops.attention(q, kc, vc, st)
        sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            ops.attention(q, kc, vc, st)
        sync()
        out[f"attn_{ver}_us"] = round((time.perf_counter() - t0) / reps * 1e6, 1)
    ops.attn_version = keep
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="/tmp/qwen05b")
    ap.add_argument("--out", default=None)
    ap.add_argument("--batches", default="1,8,32,64,128")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warm", type=int, default=3)
    ap.add_argument("--graphs", action="store_true")
    ap.add_argument("--sampling", action="store_true")
    ap.add_argument("--hbm-tbs", type=float, default=4.8, help="datasheet bandwidth, TB/s")
    args = ap.parse_args()
    t0 = time.time()
    if not os.path.exists(os.path.join(args.model, "model.safetensors")):
        from oracle import make_05b

        make_05b(args.model)
    runner = PaddleModelRunner(args.model, device="gpu")
    graphs = runner.graphs
    copy_bps = copy_bandwidth(runner.ops)
    res: dict = {"device": paddle.device.cuda.get_device_name(), "paddle": paddle.__version__,
                 "ops": runner.ops.name, "attn": getattr(runner.ops, "attn_version", None),
                 "attn_keys_per_split": getattr(runner.ops, "keys_per_split", None),
                 "fused_gemm_rows": getattr(runner.ops, "fused_gemm_rows", None),
                 "head_select_rows": getattr(runner.ops, "head_select_rows", None),
                 "dtype": runner.dtype, "ctx": args.ctx, "load_s": round(time.time() - t0, 1),
                 "weight_bytes": weight_bytes(runner), "hbm_datasheet_bytes_per_s": args.hbm_tbs * 1e12,
                 "copy_bytes_per_s_measured": round(copy_bps), "rows": []}  # fmt: skip
    print(f"{res['device']}: D2D copy {copy_bps / 1e12:.2f} TB/s (read + write)", flush=True)
    n = args.warm + args.steps

    def save() -> None:
        if (lt := getattr(runner.ops, "lt", None)) is not None:
            res["cublaslt"] = lt.summary()
        if args.out:
            with open(args.out, "w") as f:
                json.dump(res, f, indent=1)

    for b in [int(x) for x in args.batches.split(",")]:
        row: dict = {"batch": b}
        try:
            runner.graphs = None  # eager
            bt = Batch(runner, b, args.ctx, n + 1)
            first, pre_s = bt.prefill()
            if b == 1:  # the first prefill compiles/warms: time TTFT on a second run
                first, pre_s = bt.prefill()
                row["ttft_ms"] = round(pre_s * 1e3, 2)
            row["prefill_s"] = round(pre_s, 3)
            times, toks = decode(bt, first, n)
            step = statistics.median(times[args.warm :])
            avg_ctx = args.ctx + args.warm + args.steps / 2
            nbytes = res["weight_bytes"] + kv_bytes(runner, int(b * avg_ctx))
            floor = nbytes / (args.hbm_tbs * 1e12)
            floor_copy = nbytes / copy_bps
            row.update(bytes_per_step=nbytes, floor_ms=round(floor * 1e3, 4),
                       floor_copy_ms=round(floor_copy * 1e3, 4), eager_step_ms=round(step * 1e3, 3),
                       eager_tok_s=round(b / step, 1), eager_x_floor=round(step / floor, 2))  # fmt: skip
            try:
                row.update(attention_us(bt, toks[-1], n))
            except Exception as e:
                row["attn_error"] = f"{type(e).__name__}: {e}"[:300]
            if args.graphs and graphs is not None:
                runner.graphs = graphs
                try:
                    bt.runner.allocate_kv_cache(bt.runner.num_blocks, bt.bs)  # attach the graphs
                    first_g, _ = bt.prefill()
                    captures = graphs.captures
                    gt, gtoks = decode(bt, first_g, n)
                    gstep = statistics.median(gt[args.warm :])
                    row.update(graph_step_ms=round(gstep * 1e3, 3), graph_tok_s=round(b / gstep, 1),
                               graph_x_floor=round(gstep / floor, 2),
                               graph_x_copy_floor=round(gstep / floor_copy, 2),
                               graph_first_step_s=round(gt[0], 3),
                               graph_captures=graphs.captures - captures,
                               graph_gpu_ms=round(graph_gpu_ms(runner), 3),
                               graph_tokens_equal_eager=gtoks == toks and first_g == first)  # fmt: skip
                    lt, ltoks = decode_lookahead(bt, first_g, n)
                    lstep = statistics.median(lt[args.warm :])
                    row.update(lookahead_step_ms=round(lstep * 1e3, 3),
                               lookahead_tok_s=round(b / lstep, 1),
                               lookahead_x_floor=round(lstep / floor, 2),
                               lookahead_x_formula=round(lstep / (nbytes / 3.35e12), 2),
                               lookahead_tokens_equal=ltoks == gtoks)  # fmt: skip
                    row.update(host_breakdown(bt, gtoks[-1], bt.ctx + n))
                    if args.sampling:
                        st, stoks = decode(bt, first_g, n, SAMPLED)
                        row.update(graph_sampled_step_ms=round(statistics.median(st[args.warm :]) * 1e3, 3),
                                   sampled_distinct=len({t for s in stoks for t in s}))  # fmt: skip
                except Exception as e:
                    import traceback

                    traceback.print_exc()
                    row["graph_error"] = f"{type(e).__name__}: {e}"[:500]
        except Exception as e:
            import traceback

            traceback.print_exc()
            row["error"] = f"{type(e).__name__}: {e}"[:500]
        print(json.dumps(row), flush=True)
        res["rows"].append(row)
        save()
    save()


if __name__ == "__main__":
    main()
