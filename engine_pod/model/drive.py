"""Drive a model runner the way the engine does, without the engine: for correctness checks.

Chunked prefill, staggered arrivals (prefill and decode mixed in one step),
shuffled non-contiguous block tables and shuffled batch order, greedy sampling.
Used by the CPU tests (tests/engine/test_model.py) and the GPU checks
(bench/gpu/greedy_check.py), so both prove the same path.
"""

from __future__ import annotations

import math
import random

from engine_pod.model.base import ModelRunner, SamplingParams, SeqWork

GREEDY = SamplingParams(temperature=0.0)


def run_paged(
    runner: ModelRunner,
    prompts: list[list[int]],
    n_new: int = 32,
    block_size: int = 4,
    chunk: int | None = None,
    stagger: int = 0,
    rng_seed: int = 0,
) -> list[list[int]]:
    """Generate `n_new` greedy tokens for every prompt; returns each prompt's new tokens."""
    rng = random.Random(rng_seed)
    need = [math.ceil((len(p) + n_new) / block_size) for p in prompts]
    num_blocks = sum(need) + 5
    runner.allocate_kv_cache(num_blocks, block_size)
    free = list(range(num_blocks))
    rng.shuffle(free)
    tables = [[free.pop() for _ in range(n)] for n in need]
    tokens = [list(p) for p in prompts]
    computed = [0] * len(prompts)
    outs: list[list[int]] = [[] for _ in prompts]
    step = 0
    while any(len(o) < n_new for o in outs):
        batch, takes = [], {}
        for i in range(len(prompts)):
            if step < i * stagger or len(outs[i]) >= n_new:
                continue
            take = tokens[i][computed[i] :][: chunk or None]
            last = computed[i] + len(take) == len(tokens[i])
            batch.append(SeqWork(f"r{i}", take, computed[i], tables[i], last, GREEDY, len(outs[i])))
            takes[i] = len(take)
        rng.shuffle(batch)
        res = runner.execute(batch)
        if set(res) != {w.request_id for w in batch if w.sample}:
            raise AssertionError(
                f"runner sampled {sorted(res)}, expected the sampling rows of {len(batch)}"
            )
        for i, n in takes.items():
            computed[i] += n
            if f"r{i}" in res:
                tokens[i].append(res[f"r{i}"])
                outs[i].append(res[f"r{i}"])
        step += 1
    return outs
