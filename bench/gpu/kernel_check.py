"""Every CUDA kernel of `engine_pod.model.ops.cuda.CudaOps` against the CPU path.

Inputs are random (fresh per case), rounded to the kernel's dtype, and fed to both
`CudaOps` on the GPU (in that dtype) and `NativeOps` on the CPU (float32: the engine's
CPU path). GPU outputs come from `paddle.empty` (never zeroed), so an element a kernel
fails to write shows up as garbage/NaN. The KV caches are pre-filled with random data and
compared whole (slots nobody should touch included). Paged attention runs decode rows
(contexts of 1 to 201 keys) and prefill chunks (fresh and continued) in one launch, for v1,
v2 and v2 with 1 and 5 splits, and v3 likewise. Writes JSON with max abs error, the reference's max
magnitude and the tolerance (relative to max(1, |ref|max)) for each (op, shape, dtype).

    python bench/gpu/kernel_check.py --out $OUT/kernels.json
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import paddle

from engine_pod.model.base import SamplingParams, SeqWork
from engine_pod.model.llama import Rope
from engine_pod.model.ops.cuda import CudaOps
from engine_pod.model.ops.native import NativeOps
from engine_pod.model.random_model import random_config
from engine_pod.model.safetensors_io import float32_to_bf16
from engine_pod.model.step_plan import plan_step

GREEDY = SamplingParams(temperature=0.0)
TOL = {"float32": 2e-4, "bfloat16": 3e-2, "float16": 4e-3}  # relative to max |ref| (>= 1)

CPU = paddle.CPUPlace()
DRY = False  # --dry-cpu: NativeOps stands in for CudaOps on the CPU (tests this harness only)


def bf16_round(a: np.ndarray) -> np.ndarray:
    """a rounded to bfloat16 (numpy, round to nearest even), back as float32."""
    return (float32_to_bf16(a).astype(np.uint32) << 16).view(np.float32)


def rounded(a: np.ndarray, dtype: str) -> np.ndarray:
    """a rounded to `dtype` (by Paddle's CPU cast), back as float32."""
    if dtype == "float32":
        return a.astype(np.float32)
    t = paddle.to_tensor(a.astype(np.float32), dtype=dtype, place=CPU)
    return t.astype("float32").numpy()


class on_cpu:
    """Run Paddle-native (CPU path) code with the CPU as the current device."""

    def __enter__(self) -> None:
        paddle.set_device("cpu")

    def __exit__(self, *exc: object) -> None:
        paddle.set_device("cpu" if DRY else "gpu")


def C(fn, *args):
    with on_cpu():
        return fn(*args)


class Checker:
    def __init__(self, gpu: CudaOps) -> None:
        self.gpu, self.cpu = gpu, NativeOps()
        self.results: list[dict] = []

    def cpu_t(self, a: np.ndarray) -> paddle.Tensor:
        return paddle.to_tensor(np.ascontiguousarray(a), place=CPU)

    def gpu_t(self, a: np.ndarray, dtype: str) -> paddle.Tensor:
        return self.gpu.to_device(a, dtype)

    def record(self, op: str, case: str, dtype: str, got: np.ndarray, ref: np.ndarray) -> None:
        got = np.asarray(got, dtype=np.float64)
        ref = np.asarray(ref, dtype=np.float64)
        scale = max(1.0, float(np.abs(ref).max()) if ref.size else 1.0)
        err = float(np.abs(got - ref).max()) if ref.size else 0.0
        ok = bool(got.shape == ref.shape and np.isfinite(got).all() and err <= TOL[dtype] * scale)
        self.results.append(dict(op=op, case=case, dtype=dtype, max_abs_err=err, ref_max=scale,
                                 tol=TOL[dtype] * scale, ok=ok))  # fmt: skip
        print(f"{'ok ' if ok else 'BAD'} {op:16} {dtype:9} {case:34} err {err:.3g} (ref max {scale:.3g})",
              flush=True)  # fmt: skip


def make_batch(rng: random.Random, block_size: int, num_blocks: int) -> list[SeqWork]:
    """Decode rows with short and multi-tile contexts + prefill chunks (fresh and continued)."""
    specs = [(0, 1), (16, 1), (70, 1), (200, 1), (0, 9), (20, 5), (100, 37)]  # (start, n)
    free = list(range(num_blocks))
    rng.shuffle(free)
    batch = []
    for i, (start, n) in enumerate(specs):
        need = (start + n + block_size - 1) // block_size
        table = [free.pop() for _ in range(need)]
        ids = [rng.randrange(256) for _ in range(n)]
        batch.append(SeqWork(f"s{i}", ids, start, table, True, GREEDY))  # sampled rows: argmax
    rng.shuffle(batch)
    return batch


def check_shape(ck: Checker, hidden: int, heads: int, kv: int, d: int, inter: int, dtype: str,
                seed: int) -> None:  # fmt: skip
    rng = np.random.default_rng(seed)
    cfg = random_config(hidden, 1, heads, kv, inter, head_dim=d)
    case = f"h{hidden} hq{heads} hkv{kv} d{d} I{inter}"
    gpu, cpu = ck.gpu, ck.cpu
    bs, nb = 16, 64
    plan = plan_step(make_batch(random.Random(seed), bs, nb), bs, nb, cfg.vocab_size, 2048)
    T, S = int(plan.token_ids.shape[0]), int(plan.sample_rows.size)
    eps = 1e-6

    with on_cpu():
        rope_c = Rope(cfg, "float32", cpu)
    rope_g = Rope(cfg, dtype, gpu)
    rope_c.cos = ck.cpu_t(rounded(rope_c.cos.numpy(), dtype))  # the GPU tables are in dtype
    rope_c.sin = ck.cpu_t(rounded(rope_c.sin.numpy(), dtype))

    def pair(*shape: int, scale: float = 1.0) -> tuple[np.ndarray, paddle.Tensor, paddle.Tensor]:
        a = rounded(rng.standard_normal(shape).astype(np.float32) * scale, dtype)
        return a, ck.cpu_t(a), ck.gpu_t(a, dtype)

    def back(t: paddle.Tensor) -> np.ndarray:
        if DRY:
            return t.astype("float32").numpy()
        return gpu.logits_to_numpy(t)  # float32 as is, else widened on the device

    st_c = C(cpu.begin_step, cfg, plan, rope_c, bs)
    st_g = gpu.begin_step(cfg, plan, rope_g, bs)

    # embedding gather
    _, tab_c, tab_g = pair(cfg.vocab_size, hidden)
    ck.record("embed", case, dtype, back(gpu.embed(tab_g, st_g)), C(cpu.embed, tab_c, st_c).numpy())
    # rms_norm, add_rms_norm, final_norm
    x, x_c, x_g = pair(T, hidden, scale=3.0)
    _, dl_c, dl_g = pair(T, hidden)
    _, w_c, w_g = pair(hidden)
    ck.record(
        "rms_norm",
        case,
        dtype,
        back(gpu.rms_norm(x_g, w_g, eps)),
        C(cpu.rms_norm, x_c, w_c, eps).numpy(),
    )
    xo_c, h_c = C(cpu.add_rms_norm, x_c, dl_c, w_c, eps)
    x2_g = ck.gpu_t(x, dtype)
    xo_g, h_g = gpu.add_rms_norm(x2_g, dl_g, w_g, eps)
    ck.record("add_rms_norm.x", case, dtype, back(xo_g), xo_c.numpy())
    ck.record("add_rms_norm.h", case, dtype, back(h_g), h_c.numpy())
    ck.record("final_norm", case, dtype, back(gpu.final_norm(ck.gpu_t(x, dtype), dl_g, w_g, st_g, eps)),
              C(cpu.final_norm, x_c, dl_c, w_c, st_c, eps).numpy())  # fmt: skip
    # linear (cuBLAS) + bias kernel
    _, wq_c, wq_g = pair((heads + 2 * kv) * d, hidden, scale=hidden**-0.5)
    _, b_c, b_g = pair((heads + 2 * kv) * d)
    ck.record(
        "linear+bias",
        case,
        dtype,
        back(gpu.linear(x_g, wq_g, b_g)),
        C(cpu.linear, x_c, wq_c, b_c).numpy(),
    )
    # bias + RoPE + paged-KV write (caches pre-filled with random data)
    cache_shape = (nb, bs, kv, d)
    kc0, kc_c, kc_g = pair(*cache_shape)
    vc0, vc_c, vc_g = pair(*cache_shape)
    qkv, qkv_c, qkv_g = pair(T, (heads + 2 * kv) * d)
    q_c = C(cpu.qkv_rope_cache, qkv_c, b_c, st_c, kc_c, vc_c)
    q_g = gpu.qkv_rope_cache(qkv_g, b_g, st_g, kc_g, vc_g)
    ck.record("qkv_rope.q", case, dtype, back(q_g), q_c.numpy())
    ck.record("qkv_rope.kcache", case, dtype, back(kc_g), kc_c.numpy())
    ck.record("qkv_rope.vcache", case, dtype, back(vc_g), vc_c.numpy())
    # the same through the streaming GEMM's RoPE epilogue (bf16 steps of its size)
    if dtype == "bfloat16" and not DRY and gpu.stream_gemm(T, int(wq_g.shape[0]), hidden, dtype):
        kc2_c, kc2_g = ck.cpu_t(kc0), ck.gpu_t(kc0, dtype)
        vc2_c, vc2_g = ck.cpu_t(vc0), ck.gpu_t(vc0, dtype)
        q_c = C(cpu.qkv_rope_cache, C(cpu.linear, x_c, wq_c), b_c, st_c, kc2_c, vc2_c)
        q_g = gpu.qkv_rope_linear(x_g, wq_g, b_g, st_g, kc2_g, vc2_g)
        ck.record("stream.qkv_rope.q", case, dtype, back(q_g), q_c.numpy())
        ck.record("stream.qkv_rope.kcache", case, dtype, back(kc2_g), kc2_c.numpy())
        ck.record("stream.qkv_rope.vcache", case, dtype, back(vc2_g), vc2_c.numpy())
    # paged attention (decode rows + prefill chunks in one launch) over those caches
    _, qa_c, qa_g = pair(T, heads, d, scale=2.0)
    ref = C(cpu.attention, qa_c, kc_c, vc_c, st_c).numpy()
    keep = gpu.attn_version
    for ver, ns in (
        ("v1", None),
        ("v2", None),
        ("v2", 1),
        ("v2", 5),
        ("v3", None),
        ("v3", 1),
        ("v3", 5),
        ("v4", None),
        ("v4", 1),
        ("v4", 5),
        ("v5", None),
        ("v5", 1),
        ("v5", 5),
    ):  # fmt: skip  (v5: bf16 only, v4 for float32)
        gpu.attn_version, gpu.force_nsplit = ver, ns
        name = f"paged_attention.{ver}" + (f".split{ns}" if ns else "")
        ck.record(name, case, dtype, back(gpu.attention(qa_g, kc_g, vc_g, st_g)), ref)
    gpu.attn_version, gpu.force_nsplit = keep, None
    # SiLU * mul
    _, gu_c, gu_g = pair(T, 2 * inter, scale=2.0)
    ck.record("silu_mul", case, dtype, back(gpu.silu_mul(gu_g)), C(cpu.silu_mul, gu_c).numpy())
    # the fused skinny GEMMs (bf16, decode-sized steps): norm + qkv, norm + gate_up + SiLU,
    # o / down + residual, against the CPU path's unfused ops
    if dtype == "bfloat16" and not DRY:
        check_fused(ck, case, pair, back, hidden, heads, kv, d, inter, eps)
        check_stream(ck, case, pair, back, hidden, heads, kv, d, inter)
        check_lt(ck, case, pair, back, hidden, heads, kv, d, inter, cfg.vocab_size)
        check_folded(ck, case, pair, back, (hidden, heads, kv, d, inter), eps, st_c, st_g,
                     cache_shape)  # fmt: skip
    # logits (in the model's dtype on the device; widened for the host) and greedy argmax,
    # straight from those logits and from a float32 copy
    _, r_c, r_g = pair(S, hidden)
    _, lm_c, lm_g = pair(cfg.vocab_size, hidden, scale=hidden**-0.5)
    lg_g = gpu.logits(r_g, lm_g)
    lg = gpu.logits_to_numpy(lg_g)
    ck.record("logits", case, dtype, lg, C(cpu.logits, r_c, lm_c).numpy())
    got = gpu.greedy(lg_g)
    ck.record("greedy_argmax", case, dtype, np.asarray(got), np.argmax(lg, axis=-1))
    got = gpu.greedy(ck.gpu_t(lg, "float32"))
    ck.record("greedy_argmax", case, "float32", np.asarray(got), np.argmax(lg, axis=-1))
    if not DRY:  # the head as decode steps run it (bf16: one rl_head_select launch; the step's
        # rows are greedy): each drawn token's logit is the float64 top, the logits as asked
        ref = r_c.numpy().astype(np.float64) @ lm_c.numpy().astype(np.float64).T
        keep, gpu.head_select_rows = gpu.head_select_rows, 64  # whatever the engine's default
        lg_h, ids_h = gpu.logits_and_ids(r_g, lm_g, st_g, need_logits=True)
        gpu.head_select_rows = keep
        ids = ids_h.numpy()
        ck.record("head_select.ids", case, dtype, ref[np.arange(S), ids], ref.max(-1))
        ck.record("head_select.logits", case, dtype, gpu.logits_to_numpy(lg_h), ref)
    _ = (kc0, vc0, qkv)


def check_fused(ck: Checker, case: str, pair, back, hidden: int, heads: int, kv: int, d: int,
                inter: int, eps: float) -> None:  # fmt: skip
    gpu, cpu, dtype = ck.gpu, ck.cpu, "bfloat16"
    shapes = {"qkv": (1, (heads + 2 * kv) * d, hidden), "o": (2, hidden, heads * d),
              "gate_up": (5, inter, hidden), "down": (2, hidden, inter)}  # fmt: skip
    wn, sp = ctypes.c_int(), ctypes.c_int()
    for m in (1, 7, 16):
        ok = {n: bool(gpu.lib.rl_gemm_config(m, a, b, f, ctypes.byref(wn), ctypes.byref(sp)))
              for n, (f, a, b) in shapes.items()}  # fmt: skip
        x, x_c, x_g = pair(m, hidden, scale=3.0)
        _, nw_c, nw_g = pair(hidden)
        c = f"{case} M={m}"
        if ok["qkv"]:
            _, w_c, w_g = pair((heads + 2 * kv) * d, hidden, scale=hidden**-0.5)
            want = C(cpu.linear, C(cpu.rms_norm, x_c, nw_c, eps), w_c).numpy()
            ck.record("fused.norm_qkv", c, dtype, back(gpu.norm_linear(x_g, nw_g, w_g, eps)), want)
        if ok["gate_up"]:
            _, w_c, w_g = pair(2 * inter, hidden, scale=hidden**-0.5)
            want = C(cpu.silu_mul, C(cpu.linear, C(cpu.rms_norm, x_c, nw_c, eps), w_c)).numpy()
            got = back(gpu.norm_linear_silu(x_g, nw_g, w_g, eps))
            ck.record("fused.norm_gate_up_silu", c, dtype, got, want)
        for name, k in (("o", heads * d), ("down", inter)):
            if ok[name]:
                _, a_c, a_g = pair(m, k)
                _, w_c, w_g = pair(hidden, k, scale=k**-0.5)
                res_g = ck.gpu_t(x, dtype)
                gpu.linear_residual(res_g, a_g, w_g)
                want = x + C(cpu.linear, a_c, w_c).numpy()
                ck.record(f"fused.{name}_residual", c, dtype, back(res_g), want)


def check_folded(ck: Checker, case: str, pair, back, dims: tuple[int, ...], eps: float, st_c,
                 st_g, cache_shape: tuple[int, ...]) -> None:  # fmt: skip
    """The folded-norm path's ops (bf16, the step's T rows; ops/base.py "folded norms"):
    GEMMs on the raw rows with the norm weight folded into W, against the CPU path's
    rms_norm(x) * n, then the unfolded W: RoPE + KV write scaling by 1 / rms, SiLU * mul
    scaling by 1 / rms, and the GEMM that adds its product into the residual (rl_gemm_acc)."""
    gpu, cpu, dtype = ck.gpu, ck.cpu, "bfloat16"
    hidden, heads, kv, d, inter = dims
    ready = int(gpu.lib.rl_gemm_acc_available())
    ck.record("folded.gemm_acc_available", case, dtype, np.array([ready]), np.array([0]))
    if ready:
        return
    T = st_g.n_tok
    x, x_c, x_g = pair(T, hidden, scale=3.0)
    n, n_c, _ = pair(hidden)

    def fold(w: np.ndarray) -> paddle.Tensor:  # W diag(n), rounded as the weights would be
        return ck.gpu_t(rounded(w * n[None, :], dtype), dtype)

    wq, wq_c, _ = pair((heads + 2 * kv) * d, hidden, scale=hidden**-0.5)
    _, b_c, b_g = pair((heads + 2 * kv) * d)
    kc0, kc_c, kc_g = pair(*cache_shape)
    vc0, vc_c, vc_g = pair(*cache_shape)
    h_c = C(cpu.rms_norm, x_c, n_c, eps)
    q_c = C(cpu.qkv_rope_cache, C(cpu.linear, h_c, wq_c), b_c, st_c, kc_c, vc_c)
    q_g = gpu.qkv_rope_rms_linear(x_g, fold(wq), b_g, st_g, kc_g, vc_g, eps)
    ck.record("folded.qkv_rope.q", case, dtype, back(q_g), q_c.numpy())
    ck.record("folded.qkv_rope.kcache", case, dtype, back(kc_g), kc_c.numpy())
    ck.record("folded.qkv_rope.vcache", case, dtype, back(vc_g), vc_c.numpy())
    wg, wg_c, _ = pair(2 * inter, hidden, scale=hidden**-0.5)
    want = C(cpu.silu_mul, C(cpu.linear, h_c, wg_c)).numpy()
    ck.record("folded.silu", case, dtype, back(gpu.silu_rms_linear(x_g, fold(wg), eps)), want)
    for name, k in (("o", heads * d), ("down", inter)):
        _, a_c, a_g = pair(T, k)
        _, w_c, w_g = pair(hidden, k, scale=k**-0.5)
        res_g = gpu.add_linear(ck.gpu_t(x, dtype), a_g, w_g)
        ck.record(
            f"folded.{name}_add", case, dtype, back(res_g), x + C(cpu.linear, a_c, w_c).numpy()
        )
    _ = (kc0, vc0)


def check_stream(ck: Checker, case: str, pair, back, hidden: int, heads: int, kv: int, d: int,
                 inter: int) -> None:  # fmt: skip
    """The streaming GEMMs (gemm_stream.cuh) at 17..64 rows (bf16; whatever the engine's
    RLFLEET_STREAM_GEMM_ROWS) through the ops the decoder calls: o's and down's products into
    add + RMSNorm (`linear_deferred`: split-K partials summed by the norm); with
    RLFLEET_STREAM_MERGE=cluster, `linear` itself. And gate_up + SiLU * mul in one kernel
    (gemm_silu.cuh, `linear_silu`; whatever RLFLEET_GATE_UP_SILU_ROWS)."""
    gpu = ck.gpu
    rows = gpu.stream_gemm_rows, gpu.gate_up_silu_rows
    gpu.stream_gemm_rows = gpu.gate_up_silu_rows = 64  # every size the kernels take
    try:
        _check_stream_rows(ck, case, pair, back, hidden, heads, kv, d, inter)
    finally:
        gpu.stream_gemm_rows, gpu.gate_up_silu_rows = rows


def _check_stream_rows(ck: Checker, case: str, pair, back, hidden: int, heads: int, kv: int,
                       d: int, inter: int) -> None:  # fmt: skip
    gpu, cpu, dtype, eps = ck.gpu, ck.cpu, "bfloat16", 1e-6
    for m in (17, 32, 33, 64):
        _, nw_c, nw_g = pair(hidden)
        x, x_c, _ = pair(m, hidden)
        for name, k in (("o", heads * d), ("down", inter)):
            if not gpu.stream_gemm(m, hidden, k, dtype):
                continue
            c = f"{case} M={m}"
            _, a_c, a_g = pair(m, k)
            _, w_c, w_g = pair(hidden, k, scale=k**-0.5)
            got = gpu.add_rms_norm(ck.gpu_t(x, dtype), gpu.linear_deferred(a_g, w_g), nw_g, eps)
            want = C(cpu.add_rms_norm, x_c, C(cpu.linear, a_c, w_c), nw_c, eps)
            ck.record(f"stream.{name}_add_norm.x", c, dtype, back(got[0]), want[0].numpy())
            ck.record(f"stream.{name}_add_norm.h", c, dtype, back(got[1]), want[1].numpy())
            if gpu.stream_merge == "cluster":
                got_l, want_l = back(gpu.linear(a_g, w_g)), C(cpu.linear, a_c, w_c).numpy()
                ck.record(f"stream.{name}", c, dtype, got_l, want_l)
        if gpu.lib.rl_gate_up_silu_units(m, inter, hidden):
            _, h_c, h_g = pair(m, hidden)
            _, gu_c, gu_g = pair(2 * inter, hidden, scale=hidden**-0.5)
            want = C(cpu.silu_mul, C(cpu.linear, h_c, gu_c)).numpy()
            ck.record("gate_up_silu", f"{case} M={m}", dtype, back(gpu.linear_silu(h_g, gu_g)),
                      want)  # fmt: skip


def check_lt(ck: Checker, case: str, pair, back, hidden: int, heads: int, kv: int, d: int,
             inter: int, vocab: int) -> None:  # fmt: skip
    """With RLFLEET_LT_GEMM_ROWS set: the layer GEMMs and the LM head on cuBLASLt with the
    measured algorithm (lt_gemm.py) at each graph bucket it takes and one row count between
    buckets (bf16), against the CPU path's linear. (Off by default: measuring every shape's
    candidates, the LM head's among them, adds minutes to this check.)"""
    gpu, cpu, dtype = ck.gpu, ck.cpu, "bfloat16"
    lt = gpu.lt
    if lt.high <= lt.low:
        return
    ck.record("lt_gemm.available", case, "float32", np.array([lt.error]), np.array([0]))
    shapes = {"qkv": ((heads + 2 * kv) * d, hidden), "o": (hidden, heads * d),
              "gate_up": (2 * inter, hidden), "down": (hidden, inter), "lm_head": (vocab, hidden)}  # fmt: skip
    rows = [b for b in lt.buckets if lt.takes(b)]
    for m in rows + [r - 1 for r in rows[-1:] if lt.takes(r - 1)]:
        for name, (n, k) in shapes.items():
            _, a_c, a_g = pair(m, k)
            _, w_c, w_g = pair(n, k, scale=k**-0.5)
            got = lt.matmul(a_g, w_g, gpu.stream)
            if got is None:
                ck.record(f"lt_gemm.{name}.taken", f"{case} M={m}", "float32", np.array([0]),
                          np.array([1]))  # fmt: skip
                continue
            ck.record(f"lt_gemm.{name}", f"{case} M={m}", dtype, back(got),
                      C(cpu.linear, a_c, w_c).numpy())  # fmt: skip


def check_argmax_ties(ck: Checker) -> None:
    rng = np.random.default_rng(7)
    lg = rng.standard_normal((6, 151936)).astype(np.float32)
    lg[0, 5] = lg[0, 100000] = 50.0  # tie: first index wins
    lg[1, :] = -np.inf
    lg[1, 77] = 0.0
    lg[2, -1] = 99.0
    for dtype in ("float32",) if DRY else ("float32", "bfloat16"):  # Paddle's CPU: no bf16
        want = lg if dtype == "float32" else bf16_round(lg)
        got = ck.gpu.greedy(ck.gpu_t(want, dtype))
        ck.record("greedy_argmax", "ties/-inf/last, V=151936", dtype, np.asarray(got),
                  np.argmax(want, -1))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--dry-cpu", action="store_true")
    args = ap.parse_args()
    global DRY
    DRY = args.dry_cpu
    if DRY:
        paddle.set_device("cpu")
        CudaOps.__init__ = lambda self: None  # type: ignore[method-assign]
        for name in (
            "to_device",
            "zeros",
            "begin_step",
            "embed",
            "rms_norm",
            "add_rms_norm",
            "linear",
            "qkv_rope_cache",
            "attention",
            "silu_mul",
            "final_norm",
            "logits",
            "logits_to_numpy",
        ):
            setattr(CudaOps, name, getattr(NativeOps, name))
        CudaOps.greedy = NativeOps.greedy
        CudaOps._attention_meta = staticmethod(NativeOps._attention_meta)
        CudaOps.name = "dry-native"
    else:
        paddle.set_device("gpu")
    try:  # float32 GEMMs in full float32 (no TF32), as on the CPU
        paddle.base.core.set_cublas_switch(False)
    except AttributeError:
        pass
    t0 = time.time()
    ck = Checker(CudaOps())
    shapes = [(64, 4, 2, 16, 128), (48, 4, 1, 16, 96), (896, 14, 2, 64, 4864), (256, 8, 8, 32, 512),
              (512, 4, 2, 128, 1024)]  # fmt: skip
    for i, shp in enumerate(shapes):
        for dtype in ("float32", "bfloat16"):
            try:
                check_shape(ck, *shp, dtype=dtype, seed=100 * i + len(dtype))
            except Exception as e:  # record and go on: one broken op must not hide the rest
                import traceback

                traceback.print_exc()
                ck.results.append(dict(op="EXCEPTION", case=str(shp), dtype=dtype, ok=False,
                                       error=f"{type(e).__name__}: {e}"))  # fmt: skip
    check_argmax_ties(ck)
    n_ok = sum(r["ok"] for r in ck.results)
    summary = {"device": "dry-cpu" if DRY else paddle.device.cuda.get_device_name(), "paddle": paddle.__version__,
               "checks": len(ck.results), "ok": n_ok, "seconds": round(time.time() - t0, 1),
               "results": ck.results}  # fmt: skip
    print(f"kernel checks: {n_ok}/{len(ck.results)} ok on {summary['device']}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
