"""The Llama / Qwen2 decoder in PaddlePaddle over a paged KV cache.

One step = one forward over every scheduled token of every sequence, flattened into a
single [T, hidden] batch (prefill chunks and decode tokens mixed: continuous batching).
Projections and the MLP are one matmul per (fused) weight for the whole batch. Each new
token's K/V is written to its cache slot (`block_table[pos // bs]`, `pos % bs`), then
attention reads each sequence's context back through its block table: decode tokens as
one padded, length-masked batch; prefill chunks one sequence at a time with a causal
mask. Logits are computed only for rows that are sampled.

The non-GEMM operations (embedding gather, residual add + RMSNorm, bias + RoPE + cache
write, paged attention, SiLU*mul, logits/greedy) go through the `engine_pod.model.ops`
seam: Paddle's own operators on the CPU (`NativeOps`), our CUDA kernels on a GPU
(`CudaOps`). The GEMMs are always `paddle.matmul`.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
import paddle

from engine_pod.model.hf_config import ModelConfig, rope_cos_sin
from engine_pod.model.ops import DecoderOps, NativeOps
from engine_pod.model.ops.native import rms_norm  # noqa: F401  (re-export)
from engine_pod.model.step_plan import StepPlan


@dataclass
class LayerWeights:
    input_norm: paddle.Tensor  # [h]
    qkv: paddle.Tensor  # [(Hq + 2 Hkv) * d, h]  q, k, v projections stacked
    qkv_bias: paddle.Tensor | None
    o: paddle.Tensor  # [h, Hq * d]
    o_bias: paddle.Tensor | None
    post_norm: paddle.Tensor  # [h]
    gate_up: paddle.Tensor  # [2 * intermediate, h]  gate then up
    down: paddle.Tensor  # [h, intermediate]


@dataclass
class DecoderWeights:
    """Serving weights as Paddle tensors (HF [out, in] layout; matmuls use transpose_y)."""

    embed: paddle.Tensor  # [vocab, h]
    layers: list[LayerWeights]
    norm: paddle.Tensor
    lm_head: paddle.Tensor  # the embedding itself when tied


def build_weights(
    cfg: ModelConfig, w: dict[str, np.ndarray], dtype: str, ops: DecoderOps | None = None
) -> DecoderWeights:
    """New Paddle tensors from float32 numpy HF weights (fusing qkv and gate/up).

    With Paddle's own ops on the CPU, an array already of `dtype` becomes a tensor over
    the same memory (no copy): `w` is handed over and must not change afterwards.
    Parts that are consecutive rows of one array (as `loader.read_checked` lays them out)
    are fused without a copy. When `ops.folds_norms(dtype)`, each layer's input and
    post-attention norm weights are folded into the qkv and gate_up columns (and become 1;
    ops/base.py "folded norms").
    """
    ops = ops or NativeOps()
    share = isinstance(ops, NativeOps) and paddle.get_device() == "cpu"
    fold = ops.folds_norms(dtype)

    def folded(norm: np.ndarray, mat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(norm weight, the GEMM weight after it): folded when `fold`."""
        if not fold:
            return norm, mat
        return np.ones_like(norm), mat * norm.astype(np.float32)[None, :]

    def t(a: np.ndarray) -> paddle.Tensor:
        if share and str(a.dtype) == dtype and a.flags.c_contiguous and a.flags.writeable:
            return paddle.from_dlpack(a)  # keeps `a` alive; no copy
        return ops.to_device(a, dtype)

    layers = []
    for n in range(cfg.num_layers):
        p = f"model.layers.{n}."
        a = p + "self_attn."
        qkv_b = None
        if cfg.qkv_bias:
            qkv_b = t(_stacked([w[a + f"{x}_proj.bias"] for x in "qkv"]))
        n1, qkv = folded(w[p + "input_layernorm.weight"],
                         _stacked([w[a + f"{x}_proj.weight"] for x in "qkv"]))  # fmt: skip
        n2, gate_up = folded(w[p + "post_attention_layernorm.weight"],
                             _stacked([w[p + "mlp.gate_proj.weight"], w[p + "mlp.up_proj.weight"]]))  # fmt: skip
        layers.append(
            LayerWeights(
                input_norm=t(n1),
                qkv=t(qkv),
                qkv_bias=qkv_b,
                o=t(w[a + "o_proj.weight"]),
                o_bias=t(w[a + "o_proj.bias"]) if cfg.o_bias else None,
                post_norm=t(n2),
                gate_up=t(gate_up),
                down=t(w[p + "mlp.down_proj.weight"]),
            )
        )
    embed = t(w["model.embed_tokens.weight"])
    lm_head = embed if cfg.tie_word_embeddings else t(w["lm_head.weight"])
    return DecoderWeights(embed, layers, t(w["model.norm.weight"]), lm_head)


def _stacked(parts: list[np.ndarray]) -> np.ndarray:
    """`np.concatenate(parts)`, without copying when the parts are, in order, all the rows
    of one C-contiguous array."""
    whole = parts[0].base
    if (
        isinstance(whole, np.ndarray)
        and whole.flags.c_contiguous
        and all(p.base is whole and p.flags.c_contiguous for p in parts)
        and all(p.dtype == whole.dtype and p.shape[1:] == whole.shape[1:] for p in parts)
        and parts[0].ctypes.data == whole.ctypes.data
        and all(x.ctypes.data + x.nbytes == y.ctypes.data for x, y in pairwise(parts))
        and sum(p.nbytes for p in parts) == whole.nbytes
    ):
        return whole
    return np.concatenate(parts)


class PagedKVCache:
    """Per layer K and V tensors of shape [num_blocks, block_size, num_kv_heads, head_dim]."""

    def __init__(
        self,
        cfg: ModelConfig,
        num_blocks: int,
        block_size: int,
        dtype: str,
        ops: DecoderOps | None = None,
    ) -> None:
        ops = ops or NativeOps()
        shape = [num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim]
        self.num_blocks, self.block_size = num_blocks, block_size
        self.k = [ops.zeros(shape, dtype) for _ in range(cfg.num_layers)]
        self.v = [ops.zeros(shape, dtype) for _ in range(cfg.num_layers)]


class Rope:
    """Precomputed HF-convention cos/sin tables [max_pos, head_dim]."""

    def __init__(self, cfg: ModelConfig, dtype: str, ops: DecoderOps | None = None) -> None:
        ops = ops or NativeOps()
        cos, sin = rope_cos_sin(cfg, np.arange(cfg.max_position_embeddings))
        self.cos = ops.to_device(cos, dtype)
        self.sin = ops.to_device(sin, dtype)

    def apply(self, x: paddle.Tensor, cos: paddle.Tensor, sin: paddle.Tensor) -> paddle.Tensor:
        """x [T, heads, d] with cos/sin [T, 1, d]: x*cos + rotate_half(x)*sin."""
        half = x.shape[-1] // 2
        rotated = paddle.concat([-x[..., half:], x[..., :half]], axis=-1)
        return x * cos + rotated * sin


class PagedDecoder:
    """Stateless math: weights + cache + a StepPlan → logits of the sampled rows.

    Every non-GEMM operation goes through `ops` (engine_pod.model.ops): Paddle's own
    operators on the CPU, our CUDA kernels on a GPU whose Paddle build lacks kernels.
    """

    def __init__(
        self, cfg: ModelConfig, dtype: str = "float32", ops: DecoderOps | None = None
    ) -> None:
        self.cfg, self.dtype = cfg, dtype
        self.ops = ops or NativeOps()
        self.rope = Rope(cfg, dtype, self.ops)

    @paddle.no_grad()
    def forward_logits(
        self, w: DecoderWeights, cache: PagedKVCache, plan: StepPlan, st: Any = None
    ) -> paddle.Tensor | None:
        """Run the step; write K/V into `cache`; logits [S, vocab] on the device (`ops.logits`)
        (None when no row is sampled). `st`: the step's uploaded indices, when the caller
        made them (static buffers for CUDA graphs); else `ops.begin_step` makes them."""
        rows = self.forward_rows(w, cache, plan, st)
        return None if rows is None else self.ops.logits(rows, w.lm_head)

    @paddle.no_grad()
    def forward_ids(
        self, w: DecoderWeights, cache: PagedKVCache, plan: StepPlan, st: Any,
        need_logits: bool = True,
    ) -> tuple[paddle.Tensor, paddle.Tensor] | None:  # fmt: skip
        """Run the step; write K/V into `cache`; (logits, token ids drawn on the device) of
        the sampled rows (`ops.logits_and_ids`; the logits may be left unwritten without
        `need_logits`), None when no row is sampled."""
        rows = self.forward_rows(w, cache, plan, st)
        if rows is None:
            return None
        return self.ops.logits_and_ids(rows, w.lm_head, st, need_logits)

    @paddle.no_grad()
    def forward_rows(
        self, w: DecoderWeights, cache: PagedKVCache, plan: StepPlan, st: Any = None
    ) -> paddle.Tensor | None:
        """Run the step; write K/V into `cache`; the sampled rows' final hidden states [S, h]
        (after the last RMSNorm), None when no row is sampled."""
        cfg, ops = self.cfg, self.ops
        eps = cfg.rms_norm_eps
        if st is None:
            st = ops.begin_step(cfg, plan, self.rope, cache.block_size)
        if ops.fused_layers(st, self.dtype):
            return self._forward_fused(w, cache, plan, st)
        if not self.cfg.o_bias and ops.folded_layers(st, self.dtype):
            return self._forward_folded(w, cache, plan, st)
        x = ops.embed(w.embed, st)
        h = ops.rms_norm(x, w.layers[0].input_norm, eps)
        delta = None
        for li, lw in enumerate(w.layers):
            if delta is not None:
                x, h = ops.add_rms_norm(x, delta, lw.input_norm, eps)
            kc, vc = cache.k[li], cache.v[li]
            q = ops.qkv_rope_linear(h, lw.qkv, lw.qkv_bias, st, kc, vc)
            attn = ops.attention(q, kc, vc, st)
            o = ops.linear_deferred(attn, lw.o, lw.o_bias)
            x, h = ops.add_rms_norm(x, o, lw.post_norm, eps)
            delta = ops.linear_deferred(ops.linear_silu(h, lw.gate_up), lw.down)
        if plan.sample_rows.size == 0:
            return None
        return ops.final_norm(x, delta, w.norm, st, eps)

    def _forward_fused(
        self, w: DecoderWeights, cache: PagedKVCache, plan: StepPlan, st: Any
    ) -> paddle.Tensor | None:
        """`forward_rows` on fused GEMMs: each norm rides in the GEMM after it, SiLU*mul in
        gate_up's, each residual add in o's and down's (the residual stream x is updated in
        place), so a layer is 6 launches instead of 9 — the same roundings in the same order."""
        ops, eps = self.ops, self.cfg.rms_norm_eps
        x = ops.embed(w.embed, st)
        for li, lw in enumerate(w.layers):
            kc, vc = cache.k[li], cache.v[li]
            qkv = ops.norm_linear(x, lw.input_norm, lw.qkv, eps)
            attn = ops.attention(ops.qkv_rope_cache(qkv, lw.qkv_bias, st, kc, vc), kc, vc, st)
            ops.linear_residual(x, attn, lw.o)
            ops.linear_residual(x, ops.norm_linear_silu(x, lw.post_norm, lw.gate_up, eps), lw.down)
        if plan.sample_rows.size == 0:
            return None
        return ops.final_norm(x, None, w.norm, st, eps)

    def _forward_folded(
        self, w: DecoderWeights, cache: PagedKVCache, plan: StepPlan, st: Any
    ) -> paddle.Tensor | None:
        """`forward_rows` with the layer norms folded into qkv / gate_up (ops/base.py "folded
        norms"): each layer is its four GEMMs on the raw residual stream x, RoPE + KV write
        and SiLU * mul scaling their products by 1 / rms(x), attention; o and down add into x."""
        ops, eps = self.ops, self.cfg.rms_norm_eps
        x = ops.embed(w.embed, st)
        for li, lw in enumerate(w.layers):
            kc, vc = cache.k[li], cache.v[li]
            q = ops.qkv_rope_rms_linear(x, lw.qkv, lw.qkv_bias, st, kc, vc, eps)
            x = ops.add_linear(x, ops.attention(q, kc, vc, st), lw.o)
            x = ops.add_linear(x, ops.silu_rms_linear(x, lw.gate_up, eps), lw.down)
        if plan.sample_rows.size == 0:
            return None
        return ops.final_norm(x, None, w.norm, st, eps)

    def forward(self, w: DecoderWeights, cache: PagedKVCache, plan: StepPlan) -> np.ndarray:
        """Run the step; write K/V into `cache`; return float32 logits [len(sample_rows), vocab]."""
        logits = self.forward_logits(w, cache, plan)
        if logits is None:
            return np.zeros((0, self.cfg.vocab_size), dtype=np.float32)
        return self.ops.logits_to_numpy(logits)
