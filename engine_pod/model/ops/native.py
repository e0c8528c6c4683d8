"""`NativeOps`: the decoder's ops as Paddle's own operators (the CPU path).

These are, op for op, the computations `llama.PagedDecoder` always did on the CPU, so
results there are unchanged (bit for bit). On a GPU they are right only where Paddle's
build has kernels for the chip (not PyPI's paddlepaddle-gpu 2.6.2 on Hopper).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import paddle
import paddle.nn.functional as F

from engine_pod.model.hf_config import ModelConfig
from engine_pod.model.ops.base import DecoderOps
from engine_pod.model.step_plan import StepPlan


def rms_norm(x: paddle.Tensor, w: paddle.Tensor, eps: float) -> paddle.Tensor:
    x32 = x.astype("float32")
    var = paddle.mean(x32 * x32, axis=-1, keepdim=True)
    return (x32 * paddle.rsqrt(var + eps)).astype(x.dtype) * w


def _attend(
    q: paddle.Tensor, k: paddle.Tensor, v: paddle.Tensor, mask: paddle.Tensor
) -> paddle.Tensor:
    """q [B, Hkv, G*n, d], k/v [B, Hkv, L, d], additive mask broadcastable to [B, Hkv, G*n, L]."""
    scale = 1.0 / float(np.sqrt(q.shape[-1]))
    scores = paddle.matmul(q, k, transpose_y=True).astype("float32") * scale + mask
    probs = F.softmax(scores, axis=-1).astype(v.dtype)
    return paddle.matmul(probs, v)


@dataclass
class NativeStep:
    cfg: ModelConfig
    plan: StepPlan
    rope: Any
    ids: paddle.Tensor
    cos: paddle.Tensor  # [T, 1, d]
    sin: paddle.Tensor
    slot_b: paddle.Tensor
    slot_o: paddle.Tensor
    meta: dict[str, object]


class NativeOps(DecoderOps):
    name = "native"

    def to_device(self, a: np.ndarray, dtype: str) -> paddle.Tensor:
        return paddle.to_tensor(np.ascontiguousarray(a), dtype=dtype)

    def zeros(self, shape: list[int], dtype: str) -> paddle.Tensor:
        return paddle.zeros(shape, dtype=dtype)

    def begin_step(
        self, cfg: ModelConfig, plan: StepPlan, rope: Any, block_size: int
    ) -> NativeStep:
        pos = paddle.to_tensor(plan.positions)
        return NativeStep(
            cfg=cfg,
            plan=plan,
            rope=rope,
            ids=paddle.to_tensor(plan.token_ids),
            cos=paddle.index_select(rope.cos, pos).unsqueeze(1),
            sin=paddle.index_select(rope.sin, pos).unsqueeze(1),
            slot_b=paddle.to_tensor(plan.slot_blocks),
            slot_o=paddle.to_tensor(plan.slot_offsets),
            meta=self._attention_meta(cfg, plan),
        )

    def embed(self, table: paddle.Tensor, st: NativeStep) -> paddle.Tensor:
        return paddle.index_select(table, st.ids)

    def rms_norm(self, x: paddle.Tensor, w: paddle.Tensor, eps: float) -> paddle.Tensor:
        return rms_norm(x, w, eps)

    def add_rms_norm(
        self, x: paddle.Tensor, delta: paddle.Tensor, w: paddle.Tensor, eps: float
    ) -> tuple[paddle.Tensor, paddle.Tensor]:
        x = x + delta
        return x, rms_norm(x, w, eps)

    def linear(
        self, x: paddle.Tensor, w: paddle.Tensor, b: paddle.Tensor | None = None
    ) -> paddle.Tensor:
        y = paddle.matmul(x, w, transpose_y=True)
        return y + b if b is not None else y

    def qkv_rope_cache(
        self,
        qkv: paddle.Tensor,
        bias: paddle.Tensor | None,
        st: NativeStep,
        kc: paddle.Tensor,
        vc: paddle.Tensor,
    ) -> paddle.Tensor:
        cfg = st.cfg
        hq, hkv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        n_tok = int(qkv.shape[0])
        if bias is not None:
            qkv = qkv + bias
        q = qkv[:, : hq * d].reshape([n_tok, hq, d])
        k = qkv[:, hq * d : (hq + hkv) * d].reshape([n_tok, hkv, d])
        v = qkv[:, (hq + hkv) * d :].reshape([n_tok, hkv, d])
        q = st.rope.apply(q, st.cos, st.sin)
        k = st.rope.apply(k, st.cos, st.sin)
        kc[st.slot_b, st.slot_o] = k  # in-place scatter into the paged cache
        vc[st.slot_b, st.slot_o] = v
        return q

    def silu_mul(self, gate_up: paddle.Tensor) -> paddle.Tensor:
        gate, up = paddle.split(gate_up, 2, axis=-1)
        return F.silu(gate) * up

    def final_norm(
        self, x: paddle.Tensor, delta: paddle.Tensor | None, w: paddle.Tensor, st: NativeStep,
        eps: float,
    ) -> paddle.Tensor:  # fmt: skip
        if delta is not None:
            x = x + delta
        rows = paddle.index_select(x, paddle.to_tensor(st.plan.sample_rows))
        return rms_norm(rows, w, eps)

    def logits(self, rows: paddle.Tensor, lm_head: paddle.Tensor) -> paddle.Tensor:
        return self.linear(rows, lm_head).astype("float32")

    # ------------------------------------------------------------------ attention
    @staticmethod
    def _attention_meta(cfg: ModelConfig, plan: StepPlan) -> dict[str, object]:
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
        groups = cfg.num_heads // cfg.num_kv_heads
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

    def attention(
        self, q: paddle.Tensor, kc: paddle.Tensor, vc: paddle.Tensor, st: NativeStep
    ) -> paddle.Tensor:
        """Grouped-query attention over the cache; returns [T, Hq * d] in flat row order."""
        cfg, plan, meta = st.cfg, st.plan, st.meta
        hq, hkv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
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
