"""Next-token sampling from logits rows (numpy): greedy, temperature, top-k, top-p, seed.

A seeded request draws from `default_rng([seed, num_generated])`, so its token depends
only on its own logits, seed and position — never on what else is in the batch.
Unseeded requests share one process RNG (seeded from OS entropy).
"""

from __future__ import annotations

import numpy as np

from engine_pod.model.base import SamplingParams

_process_rng = np.random.default_rng()
_ONE_BITS = int(np.float64(1.0).view(np.int64))


def request_rng(params: SamplingParams, num_generated: int) -> np.random.Generator:
    """The generator for one draw: per (seed, num_generated) when seeded, else the process RNG."""
    if params.seed is None:
        return _process_rng
    return np.random.default_rng([params.seed & 0xFFFFFFFFFFFFFFFF, num_generated])


def filtered_probs(logits: np.ndarray, params: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """(token ids, probabilities) kept after temperature, top-k and top-p; ids ascending."""
    x = logits.astype(np.float64) / max(params.temperature, 1e-6)
    vocab = x.shape[-1]
    if 0 < params.top_k < vocab:
        ids = np.argpartition(-x, params.top_k - 1)[: params.top_k]
    else:
        ids = np.arange(vocab)
    ids = ids[np.isfinite(x[ids])]
    if ids.size == 0:  # every logit -inf/nan: fall back to argmax of what we have
        return np.array([int(np.nanargmax(logits))]), np.array([1.0])
    z = x[ids]
    p = np.exp(z - z.max())
    p /= p.sum()
    if params.top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        keep = order[: int(np.searchsorted(cum, params.top_p, side="left")) + 1]
        ids, p = ids[keep], p[keep]
        p = p / p.sum()
    order = np.argsort(ids, kind="stable")  # canonical order → the draw is reproducible
    return ids[order], p[order]


def sample_row(logits: np.ndarray, params: SamplingParams, num_generated: int = 0) -> int:
    """One token from one logits row [vocab]."""
    if params.greedy or params.top_k == 1:
        return int(np.argmax(logits))
    ids, p = filtered_probs(logits, params)
    if ids.size == 1:
        return int(ids[0])
    u = request_rng(params, num_generated).random()
    idx = int(np.searchsorted(np.cumsum(p), u * p.sum(), side="right"))
    return int(ids[min(idx, ids.size - 1)])


def sample(logits: np.ndarray, params: list[SamplingParams], num_generated: list[int]) -> list[int]:
    """One token per row of `logits` [n, vocab]; greedy rows use a single vectorized argmax."""
    out = np.argmax(logits, axis=-1).tolist()
    for i, sp in enumerate(params):
        if not (sp.greedy or sp.top_k == 1):
            out[i] = sample_row(logits[i], sp, num_generated[i])
    return [int(t) for t in out]


def device_rows(params: list[SamplingParams], num_generated: list[int]) -> np.ndarray:
    """Per-row parameters of the device sampler (`sample_k` in ops/kernels.cu), int64 [n, 5]:
    temperature and top_p as float64 bits, top_k, seed (uint64 bits), counter.

    Greedy rows get temperature 0. A seeded row's counter is `num_generated`, so its draw
    depends only on (seed, position), as on the CPU (the random numbers differ from numpy's).
    Unseeded rows get a fresh seed from the process RNG each step.
    """
    n = len(params)
    out = np.zeros((n, 5), dtype=np.int64)
    out[:, 1] = _ONE_BITS  # top_p 1.0
    out[:, 2] = -1
    drawn = [r for r, sp in enumerate(params) if sp.temperature > 0.0 and sp.top_k != 1]
    unseeded = []
    for r in drawn:  # the others: temperature 0 (argmax)
        sp = params[r]
        out[r, :2] = np.array([sp.temperature, sp.top_p], dtype=np.float64).view(np.int64)
        out[r, 2] = sp.top_k
        if sp.seed is None:
            unseeded.append(r)
        else:
            seed = sp.seed & 0xFFFFFFFFFFFFFFFF
            out[r, 3] = seed - 2**64 if seed >= 2**63 else seed  # the uint64 bits
        out[r, 4] = num_generated[r]
    if unseeded:
        fresh = _process_rng.integers(0, 2**64, size=len(unseeded), dtype=np.uint64)
        out[unseeded, 3] = fresh.view(np.int64)
    return out
