"""CUDA graphs in the engine's runner (engine_pod/model/cuda_graphs.py), on the GPU.

1. The tiny model (float32, TF32 off), driven like the engine (`run_paged`: chunked
   prefill, staggered arrivals, shuffled block tables, 5 prompts so decode batches are
   padded to a bucket) with graphs on (the default) = `reference_greedy`; graphs were
   captured and replayed. Again with `max_graph_batch=2` (larger decode batches eager).
2. A weight update with graphs live: `prepare_weights` + `swap_weights` to the tiny model
   of seed 1 copies the weights into the captured graphs' buffers; the same graphs (no
   recapture) then give seed 1's `reference_greedy` tokens.
3. Seeded sampling (temperature 0.8, top-k 40, top-p 0.9) through `execute`: the tokens
   with graphs equal those of eager steps (batch 4 = a bucket, so both run the same GEMMs),
   and a second run repeats them (seeded = reproducible).

    python bench/gpu/graph_check.py --out $OUT/graphs.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import paddle

from engine_pod.model.base import SamplingParams, SeqWork
from engine_pod.model.drive import run_paged
from engine_pod.model.loader import load_checkpoint
from engine_pod.model.paddle_runner import PaddleModelRunner
from engine_pod.model.reference import reference_greedy
from engine_pod.model.tiny import ensure_tiny_model

TEXTS = ["Hello world, this is", "Hello", "The quick brown fox jumps", "a", "Paged attention!"]


def counts(runner: PaddleModelRunner) -> dict:
    g = runner.graphs
    return {"captures": g.captures, "replays": g.replays, "graphs": len(g.graphs)} if g else {}


def run_sampled(runner: PaddleModelRunner, prompts: list[list[int]], n_new: int,
                sp: SamplingParams, block_size: int = 16) -> list[list[int]]:  # fmt: skip
    """Whole-prompt prefill, then `n_new` - 1 decode steps of every prompt together."""
    need = [math.ceil((len(p) + n_new) / block_size) for p in prompts]
    runner.allocate_kv_cache(sum(need) + 2, block_size)
    tables, start = [], 0
    for n in need:
        tables.append(list(range(start, start + n)))
        start += n
    outs: list[list[int]] = [[] for _ in prompts]
    batch = [SeqWork(f"r{i}", p, 0, tables[i], True, sp, 0) for i, p in enumerate(prompts)]
    for _ in range(n_new):
        res = runner.execute(batch)
        for i in range(len(prompts)):
            outs[i].append(res[f"r{i}"])
        batch = [SeqWork(f"r{i}", [outs[i][-1]], len(prompts[i]) + len(outs[i]) - 1, tables[i],
                         True, sp, len(outs[i])) for i in range(len(prompts))]  # fmt: skip
    return outs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    paddle.set_device("gpu")
    paddle.base.core.set_cublas_switch(False)  # float32 GEMMs without TF32, as on the CPU
    t0 = time.time()
    tmp = tempfile.mkdtemp()
    tiny0 = ensure_tiny_model(os.path.join(tmp, "tiny0"), seed=0)
    tiny1 = ensure_tiny_model(os.path.join(tmp, "tiny1"), seed=1)
    res: dict = {"device": paddle.device.cuda.get_device_name()}

    # 1. greedy with graphs = the reference
    runner = PaddleModelRunner(tiny0, device="gpu")
    prompts = [runner.tokenizer.encode(t) for t in TEXTS]
    want0 = [reference_greedy(load_checkpoint(tiny0), p, 24) for p in prompts]
    want1 = [reference_greedy(load_checkpoint(tiny1), p, 24) for p in prompts]
    scen = {}
    for name, kw in {"chunk3_stagger2_bs4": dict(chunk=3, stagger=2, block_size=4),
                     "whole_bs16": dict(block_size=16, rng_seed=1)}.items():  # fmt: skip
        got = run_paged(runner, prompts, 24, **kw)
        scen[name] = dict(equal=got == want0, **counts(runner))
    small = PaddleModelRunner(tiny0, device="gpu", max_graph_batch=2)
    got = run_paged(small, prompts, 24, chunk=3, stagger=1)
    scen["max_graph_batch2"] = dict(equal=got == want0, **counts(small))
    del small
    res["greedy"] = scen
    print(f"1. greedy with graphs = reference: {scen}", flush=True)

    # 2. weight update with the graphs live (same cache: run_paged must not reallocate it)
    got_before = run_paged(runner, prompts, 24, block_size=16, rng_seed=1)
    before = counts(runner)
    runner.allocate_kv_cache = lambda num_blocks, block_size: None  # keep cache + graphs
    runner.swap_weights(runner.prepare_weights(tiny1))
    got_after = run_paged(runner, prompts, 24, block_size=16, rng_seed=1)
    after = counts(runner)
    res["weight_update"] = dict(
        before_equal_seed0=got_before == want0,
        after_equal_seed1=got_after == want1,
        captures_before=before["captures"],
        captures_after=after["captures"],
        replays_after_update=after["replays"] - before["replays"],
        ok=got_before == want0 and got_after == want1 and after["captures"] == before["captures"]
        and after["replays"] > before["replays"],
    )  # fmt: skip
    print(f"2. weight update: {res['weight_update']}", flush=True)
    del runner

    # 3. seeded sampling: graphs = eager, reproducible
    sp = SamplingParams(temperature=0.8, top_k=40, top_p=0.9, seed=4242)
    r = PaddleModelRunner(tiny0, device="gpu")
    g1 = run_sampled(r, prompts[:4], 24, sp)
    g2 = run_sampled(r, prompts[:4], 24, sp)
    replays = r.graphs.replays
    graphs, r.graphs = r.graphs, None  # eager
    e1 = run_sampled(r, prompts[:4], 24, sp)
    r.graphs = graphs
    res["sampling"] = dict(graphs_equal_eager=g1 == e1, reproducible=g1 == g2, graph_replays=replays,
                           distinct_tokens=len({t for o in g1 for t in o}), tokens=g1)  # fmt: skip
    print(f"3. seeded sampling: graphs = eager {g1 == e1}, reproducible {g1 == g2}", flush=True)
    res["ok"] = bool(
        all(v["equal"] for v in scen.values())
        and res["weight_update"]["ok"]
        and g1 == e1
        and g1 == g2
    )
    res["seconds"] = round(time.time() - t0, 1)
    print(f"graph checks: {'ALL OK' if res['ok'] else 'FAILED'} in {res['seconds']} s", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
