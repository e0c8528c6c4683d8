"""The Llama / Qwen2 decoder in PaddlePaddle over a paged KV cache.

One step = one forward over every scheduled token of every sequence, flattened into a
single [T, hidden] batch (prefill chunks and decode tokens mixed: continuous batching).
Projections and the MLP are one matmul per (fused) weight for the whole batch. Each new
token's K/V is written to its cache slot (`block_table[pos // bs]`, `pos % bs`), then
attention reads each sequence's context back through its block table: decode tokens as
one padded, length-masked batch; prefill chunks one sequence at a time with a causal
mask. Logits are computed only for rows that are sampled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import paddle
import paddle.nn.functional as F

from engine_pod.model.hf_config import ModelConfig, rope_cos_sin
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


def build_weights(cfg: ModelConfig, w: dict[str, np.ndarray], dtype: str) -> DecoderWeights:
    """New Paddle tensors from float32 numpy HF weights (fusing qkv and gate/up)."""

    def t(a: np.ndarray) -> paddle.Tensor:
        return paddle.to_tensor(np.ascontiguousarray(a), dtype=dtype)

    layers = []
    for n in range(cfg.num_layers):
        p = f"model.layers.{n}."
        a = p + "self_attn."
        qkv_b = None
        if cfg.qkv_bias:
            qkv_b = t(np.concatenate([w[a + f"{x}_proj.bias"] for x in "qkv"]))
        layers.append(
            LayerWeights(
                input_norm=t(w[p + "input_layernorm.weight"]),
                qkv=t(np.concatenate([w[a + f"{x}_proj.weight"] for x in "qkv"])),
                qkv_bias=qkv_b,
                o=t(w[a + "o_proj.weight"]),
                o_bias=t(w[a + "o_proj.bias"]) if cfg.o_bias else None,
                post_norm=t(w[p + "post_attention_layernorm.weight"]),
                gate_up=t(
                    np.concatenate([w[p + "mlp.gate_proj.weight"], w[p + "mlp.up_proj.weight"]])
                ),
                down=t(w[p + "mlp.down_proj.weight"]),
            )
        )
    embed = t(w["model.embed_tokens.weight"])
    lm_head = embed if cfg.tie_word_embeddings else t(w["lm_head.weight"])
    return DecoderWeights(embed, layers, t(w["model.norm.weight"]), lm_head)


class PagedKVCache:
    """Per layer K and V tensors of shape [num_blocks, block_size, num_kv_heads, head_dim]."""

    def __init__(self, cfg: ModelConfig, num_blocks: int, block_size: int, dtype: str) -> None:
        shape = [num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim]
        self.num_blocks, self.block_size = num_blocks, block_size
        self.k = [paddle.zeros(shape, dtype=dtype) for _ in range(cfg.num_layers)]
        self.v = [paddle.zeros(shape, dtype=dtype) for _ in range(cfg.num_layers)]


class Rope:
    """Precomputed HF-convention cos/sin tables [max_pos, head_dim]."""

    def __init__(self, cfg: ModelConfig, dtype: str) -> None:
        cos, sin = rope_cos_sin(cfg, np.arange(cfg.max_position_embeddings))
        self.cos = paddle.to_tensor(cos, dtype=dtype)
        self.sin = paddle.to_tensor(sin, dtype=dtype)

    def apply(self, x: paddle.Tensor, cos: paddle.Tensor, sin: paddle.Tensor) -> paddle.Tensor:
        """x [T, heads, d] with cos/sin [T, 1, d]: x*cos + rotate_half(x)*sin."""
        half = x.shape[-1] // 2
        rotated = paddle.concat([-x[..., half:], x[..., :half]], axis=-1)
        return x * cos + rotated * sin


def rms_norm(x: paddle.Tensor, w: paddle.Tensor, eps: float) -> paddle.Tensor:
    x32 = x.astype("float32")
    var = paddle.mean(x32 * x32, axis=-1, keepdim=True)
    return (x32 * paddle.rsqrt(var + eps)).astype(x.dtype) * w


def _linear(x: paddle.Tensor, w: paddle.Tensor, b: paddle.Tensor | None = None) -> paddle.Tensor:
    y = paddle.matmul(x, w, transpose_y=True)
    return y + b if b is not None else y


def _attend(
    q: paddle.Tensor, k: paddle.Tensor, v: paddle.Tensor, mask: paddle.Tensor
) -> paddle.Tensor:
    """q [B, Hkv, G*n, d], k/v [B, Hkv, L, d], additive mask broadcastable to [B, Hkv, G*n, L]."""
    scale = 1.0 / float(np.sqrt(q.shape[-1]))
    scores = paddle.matmul(q, k, transpose_y=True).astype("float32") * scale + mask
    probs = F.softmax(scores, axis=-1).astype(v.dtype)
    return paddle.matmul(probs, v)


class PagedDecoder:
    """Stateless math: weights + cache + a StepPlan → logits of the sampled rows."""

    def __init__(self, cfg: ModelConfig, dtype: str = "float32") -> None:
        self.cfg, self.dtype = cfg, dtype
        self.rope = Rope(cfg, dtype)

    @paddle.no_grad()
    def forward(self, w: DecoderWeights, cache: PagedKVCache, plan: StepPlan) -> np.ndarray:
        """Run the step; write K/V into `cache`; return float32 logits [len(sample_rows), vocab]."""
        cfg = self.cfg
        n_tok = int(plan.token_ids.shape[0])
        hq, hkv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        ids = paddle.to_tensor(plan.token_ids)
        pos = paddle.to_tensor(plan.positions)
        cos = paddle.index_select(self.rope.cos, pos).unsqueeze(1)
        sin = paddle.index_select(self.rope.sin, pos).unsqueeze(1)
        slot_b = paddle.to_tensor(plan.slot_blocks)
        slot_o = paddle.to_tensor(plan.slot_offsets)
        meta = self._attention_meta(plan)

        x = paddle.index_select(w.embed, ids)
        for li, lw in enumerate(w.layers):
            h = rms_norm(x, lw.input_norm, cfg.rms_norm_eps)
            qkv = _linear(h, lw.qkv, lw.qkv_bias)
            q = qkv[:, : hq * d].reshape([n_tok, hq, d])
            k = qkv[:, hq * d : (hq + hkv) * d].reshape([n_tok, hkv, d])
            v = qkv[:, (hq + hkv) * d :].reshape([n_tok, hkv, d])
            q = self.rope.apply(q, cos, sin)
            k = self.rope.apply(k, cos, sin)
            kc, vc = cache.k[li], cache.v[li]
            kc[slot_b, slot_o] = k  # in-place scatter into the paged cache
            vc[slot_b, slot_o] = v
            attn = self._attention(q, kc, vc, plan, meta)
            x = x + _linear(attn, lw.o, lw.o_bias)
            h = rms_norm(x, lw.post_norm, cfg.rms_norm_eps)
            gate, up = paddle.split(_linear(h, lw.gate_up), 2, axis=-1)
            x = x + _linear(F.silu(gate) * up, lw.down)
        if plan.sample_rows.size == 0:
            return np.zeros((0, cfg.vocab_size), dtype=np.float32)
        rows = paddle.index_select(x, paddle.to_tensor(plan.sample_rows))
        rows = rms_norm(rows, w.norm, cfg.rms_norm_eps)
        return _linear(rows, w.lm_head).astype("float32").numpy()

    def _attention_meta(self, plan: StepPlan) -> dict[str, object]:
        """Index tensors and masks for the step (shared by every layer)."""
        meta: dict[str, object] = {}
        if plan.num_decode:
            width = plan.decode_blocks.shape[1]
            valid = np.arange(width)[None, :] < plan.decode_lens[:, None]
            mask = np.where(valid, 0.0, -np.inf).astype(np.float32)[:, None, None, :]
            meta["decode"] = (
                paddle.to_tensor(plan.decode_blocks),
                paddle.to_tensor(plan.decode_offsets),
                paddle.to_tensor(mask),
            )
        groups = self.cfg.num_heads // self.cfg.num_kv_heads
        chunks = []
        for c in plan.prefills:
            ctx = c.start_pos + c.num_tokens
            qpos = c.start_pos + np.arange(c.num_tokens)
            causal = np.where(np.arange(ctx)[None, :] <= qpos[:, None], 0.0, -np.inf)
            mask = np.tile(causal.astype(np.float32), (groups, 1))[None]  # [1, G*n, ctx]
            chunks.append(
                (
                    c,
                    paddle.to_tensor(c.ctx_blocks),
                    paddle.to_tensor(c.ctx_offsets),
                    paddle.to_tensor(mask),
                )
            )
        meta["prefill"] = chunks
        return meta

    def _attention(
        self,
        q: paddle.Tensor,
        kc: paddle.Tensor,
        vc: paddle.Tensor,
        plan: StepPlan,
        meta: dict[str, object],
    ) -> paddle.Tensor:
        """Grouped-query attention over the cache; returns [T, Hq * d] in flat row order."""
        hq, hkv, d = self.cfg.num_heads, self.cfg.num_kv_heads, self.cfg.head_dim
        g = hq // hkv
        outs = []
        if plan.num_decode:
            blocks, offsets, mask = meta["decode"]
            b = plan.num_decode
            qd = q[:b].reshape([b, hkv, g, d])
            kd = kc[blocks, offsets].transpose([0, 2, 1, 3])  # [B, Hkv, L, d]
            vd = vc[blocks, offsets].transpose([0, 2, 1, 3])
            outs.append(_attend(qd, kd, vd, mask).reshape([b, hq * d]))
        for c, blocks, offsets, mask in meta["prefill"]:
            n = c.num_tokens
            qp = q[c.row_start : c.row_start + n].reshape([n, hkv, g, d])
            qp = qp.transpose([1, 2, 0, 3]).reshape([1, hkv, g * n, d])
            kp = kc[blocks, offsets].transpose([1, 0, 2]).unsqueeze(0)  # [1, Hkv, L, d]
            vp = vc[blocks, offsets].transpose([1, 0, 2]).unsqueeze(0)
            out = _attend(qp, kp, vp, mask).reshape([hkv, g, n, d])
            outs.append(out.transpose([2, 0, 1, 3]).reshape([n, hq * d]))
        return outs[0] if len(outs) == 1 else paddle.concat(outs, axis=0)
