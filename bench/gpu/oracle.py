"""A KV-cached float64 numpy oracle for greedy decoding, and the expected tokens it gives.

`engine_pod.model.reference.reference_greedy` recomputes the whole sequence (and converts
every weight to float64) at each token: right, but minutes per token for a Qwen2-0.5B
shape. `cached_greedy` does the same textbook math (float64, HF RoPE, GQA by repeating kv
heads, causal softmax) with a KV cache and the prompts decoded in lockstep; `main` first
checks it token for token against `reference_greedy` on small models, then writes the
expected greedy tokens of the 0.5B-shaped random model for the device check:

    python bench/gpu/oracle.py --out bench/gpu/expected_05b.json     # ~1-3 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from engine_pod.model.hf_config import ModelConfig, rope_cos_sin
from engine_pod.model.loader import load_checkpoint
from engine_pod.model.random_model import make_random_model
from engine_pod.model.reference import (
    attention_out_and_mlp,
    reference_greedy,
    rms_norm,
    rotate_half,
)

# the Qwen2-0.5B shape (random weights): hidden, layers, heads, kv heads, intermediate, vocab
QWEN05B = dict(hidden=896, layers=24, heads=14, kv_heads=2, intermediate=4864, vocab=151936)
PROMPTS = [
    "Hello",
    "The quick brown fox jumps over the lazy dog",
    "a",
    "Paged attention, 分页注意力!",
    "Once upon a time, in a land far away, there lived",
    "def fib(n):\n    return",
    "1, 2, 3, 4, 5,",
    "Kubernetes operators reconcile",
]


def make_05b(out_dir: str, dtype: str = "bfloat16", seed: int = 0) -> str:
    q = QWEN05B
    return make_random_model(out_dir, q["hidden"], q["layers"], q["heads"], q["kv_heads"],
                             q["intermediate"], q["vocab"], dtype, seed=seed)  # fmt: skip


def cached_greedy(
    cfg: ModelConfig, w: dict[str, np.ndarray], prompts: list[list[int]], n_new: int
) -> list[list[int]]:
    """Greedy-decode `n_new` tokens after each prompt (float64, KV cache, lockstep)."""
    g = {k: v.astype(np.float64) for k, v in w.items()}
    d, hq, hkv = cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
    rep = hq // hkv
    nl = cfg.num_layers
    head = g["model.embed_tokens.weight"] if cfg.tie_word_embeddings else g["lm_head.weight"]
    caches: list[list[list[np.ndarray]]] = [[[None, None] for _ in range(nl)] for _ in prompts]

    def run(seq_rows: list[tuple[int, list[int], int]]) -> np.ndarray:
        """seq_rows: (seq, token ids, start pos); returns logits of each seq's last token."""
        ids = np.concatenate([np.asarray(t) for _, t, _ in seq_rows])
        pos = np.concatenate([np.arange(p, p + len(t)) for _, t, p in seq_rows])
        spans, r = [], 0
        for s, t, p in seq_rows:
            spans.append((s, r, len(t), p))
            r += len(t)
        cos, sin = (a.astype(np.float64)[:, None, :] for a in rope_cos_sin(cfg, pos))
        x = g["model.embed_tokens.weight"][ids]
        for li in range(nl):
            p = f"model.layers.{li}."
            h = rms_norm(x, g[p + "input_layernorm.weight"], cfg.rms_norm_eps)
            proj = {}
            for name in "qkv":
                y = h @ g[p + f"self_attn.{name}_proj.weight"].T
                if cfg.qkv_bias:
                    y = y + g[p + f"self_attn.{name}_proj.bias"]
                proj[name] = y.reshape(len(ids), -1, d)
            q = proj["q"] * cos + rotate_half(proj["q"]) * sin
            k = proj["k"] * cos + rotate_half(proj["k"]) * sin
            v = proj["v"]
            attn = np.empty((len(ids), hq * d))
            for s, r0, n, p0 in spans:
                c = caches[s][li]
                c[0] = k[r0 : r0 + n] if c[0] is None else np.concatenate([c[0], k[r0 : r0 + n]])
                c[1] = v[r0 : r0 + n] if c[1] is None else np.concatenate([c[1], v[r0 : r0 + n]])
                kk, vv = np.repeat(c[0], rep, axis=1), np.repeat(c[1], rep, axis=1)
                L = kk.shape[0]
                qpos = p0 + np.arange(n)
                mask = np.where(np.arange(L)[None, :] <= qpos[:, None], 0.0, -np.inf)
                sc = np.einsum("qhd,khd->hqk", q[r0 : r0 + n], kk) / np.sqrt(d) + mask
                sc = np.exp(sc - sc.max(-1, keepdims=True))
                pr = sc / sc.sum(-1, keepdims=True)
                attn[r0 : r0 + n] = np.einsum("hqk,khd->qhd", pr, vv).reshape(n, hq * d)
            x = attention_out_and_mlp(cfg, g, p, x, attn)
        last = np.asarray([r0 + n - 1 for _, r0, n, _ in spans])
        return rms_norm(x[last], g["model.norm.weight"], cfg.rms_norm_eps) @ head.T

    outs: list[list[int]] = [[] for _ in prompts]
    for s, pr in enumerate(prompts):  # prefill one prompt at a time
        outs[s].append(int(np.argmax(run([(s, list(pr), 0)])[0])))
    for _ in range(n_new - 1):  # then decode all prompts together
        logits = run(
            [(s, [outs[s][-1]], len(pr) + len(outs[s]) - 1) for s, pr in enumerate(prompts)]
        )
        for s in range(len(prompts)):
            outs[s].append(int(np.argmax(logits[s])))
    return outs


def self_check() -> None:
    """cached_greedy == reference_greedy on small Qwen2 and Llama models."""
    with tempfile.TemporaryDirectory() as tmp:
        for kw in (dict(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128),
                   dict(hidden=48, layers=2, heads=4, kv_heads=1, intermediate=96,
                        architecture="LlamaForCausalLM", head_dim=16, tie_word_embeddings=True)):  # fmt: skip
            m = make_random_model(os.path.join(tmp, str(len(os.listdir(tmp)))), **kw)
            cfg, w = load_checkpoint(m)
            prompts = [[72, 101, 108], [1, 2, 3, 4, 5, 6, 7], [97]]
            got = cached_greedy(cfg, w, prompts, 12)
            want = [reference_greedy((cfg, w), p, 12) for p in prompts]
            assert got == want, (kw, got, want)
    print("oracle self-check: cached_greedy == reference_greedy", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "expected_05b.json"))
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--n-new", type=int, default=32)
    args = ap.parse_args()
    self_check()
    from engine_pod.model.tokenizer import load_tokenizer

    t0 = time.time()
    model_dir = args.model_dir or make_05b(tempfile.mkdtemp(prefix="qwen05b-"))
    cfg, w = load_checkpoint(model_dir)
    tok = load_tokenizer(model_dir, cfg.eos_token_id)
    prompts = [tok.encode(t) for t in PROMPTS]
    print(f"model ready in {time.time() - t0:.0f}s; decoding", flush=True)
    t0 = time.time()
    outs = cached_greedy(cfg, w, prompts, args.n_new)
    res = {"model": {"shape": QWEN05B, "dtype": "bfloat16", "seed": 0},
           "oracle": "bench/gpu/oracle.py cached_greedy (float64 numpy, = reference_greedy)",
           "prompts": PROMPTS, "prompt_ids": prompts, "n_new": args.n_new, "expected": outs}  # fmt: skip
    with open(args.out, "w") as f:
        json.dump(res, f)
    print(f"wrote {args.out} in {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
