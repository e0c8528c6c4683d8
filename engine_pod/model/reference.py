"""The oracle: a plain full-recompute Llama/Qwen2 forward in numpy (float64, no cache).

Written independently of `llama.py` (textbook causal attention over the whole
sequence, recomputed every token) so tests can compare the paged Paddle runner
against it token for token.
"""

from __future__ import annotations

import numpy as np

from engine_pod.model.hf_config import ModelConfig, rope_cos_sin
from engine_pod.model.loader import load_checkpoint


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def attention_out_and_mlp(
    cfg: ModelConfig, g: dict[str, np.ndarray], p: str, x: np.ndarray, attn: np.ndarray
) -> np.ndarray:
    """The rest of decoder layer `p` after attention: o_proj + residual, RMSNorm, SwiGLU + residual."""
    o = attn @ g[p + "self_attn.o_proj.weight"].T
    if cfg.o_bias:
        o = o + g[p + "self_attn.o_proj.bias"]
    x = x + o
    h = rms_norm(x, g[p + "post_attention_layernorm.weight"], cfg.rms_norm_eps)
    gate = h @ g[p + "mlp.gate_proj.weight"].T
    up = h @ g[p + "mlp.up_proj.weight"].T
    return x + (gate / (1.0 + np.exp(-gate)) * up) @ g[p + "mlp.down_proj.weight"].T


def reference_forward(cfg: ModelConfig, w: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """Logits [len(ids), vocab] (float64) for the whole sequence."""
    n, d = len(ids), cfg.head_dim
    hq, hkv = cfg.num_heads, cfg.num_kv_heads
    g = {k: v.astype(np.float64) for k, v in w.items()}
    x = g["model.embed_tokens.weight"][np.asarray(ids)]
    cos, sin = (a.astype(np.float64)[:, None, :] for a in rope_cos_sin(cfg, np.arange(n)))
    causal = np.triu(np.full((n, n), -np.inf), k=1)
    for layer in range(cfg.num_layers):
        p = f"model.layers.{layer}."
        h = rms_norm(x, g[p + "input_layernorm.weight"], cfg.rms_norm_eps)
        proj = {}
        for name in ("q", "k", "v"):
            y = h @ g[p + f"self_attn.{name}_proj.weight"].T
            if cfg.qkv_bias:
                y = y + g[p + f"self_attn.{name}_proj.bias"]
            proj[name] = y.reshape(n, -1, d)
        q = proj["q"] * cos + rotate_half(proj["q"]) * sin
        k = proj["k"] * cos + rotate_half(proj["k"]) * sin
        v = proj["v"]
        rep = hq // hkv
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)  # head i uses kv head i // rep
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(d) + causal
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        probs = scores / scores.sum(-1, keepdims=True)
        attn = np.einsum("hqk,khd->qhd", probs, v).reshape(n, hq * d)
        x = attention_out_and_mlp(cfg, g, p, x, attn)
    x = rms_norm(x, g["model.norm.weight"], cfg.rms_norm_eps)
    head = g["model.embed_tokens.weight"] if cfg.tie_word_embeddings else g["lm_head.weight"]
    return x @ head.T


def reference_greedy(
    model: str | tuple[ModelConfig, dict[str, np.ndarray]], prompt_ids: list[int], n: int
) -> list[int]:
    """Greedy-decode `n` tokens after `prompt_ids`, recomputing the full sequence each step.

    `model` is an HF-layout directory or an already loaded `(config, weights)` pair.
    """
    cfg, w = load_checkpoint(model) if isinstance(model, str) else model
    ids = list(prompt_ids)
    out: list[int] = []
    for _ in range(n):
        tok = int(np.argmax(reference_forward(cfg, w, ids)[-1]))
        out.append(tok)
        ids.append(tok)
    return out
