"""The engine core's own host time per decode step (everything but the forward).

A real `EngineCore` (scheduler, block manager with the prefix cache, output processor with
the tiny model's byte-level tokenizer) drives the light replica's runner with no step delay,
so what is timed is the core's Python work a step: scheduling the batch, committing the
sampled tokens (prefix-cache registration of full blocks), detokenizing and the stop rules.
On a GPU this work runs between two forwards of ~1-2 ms (bench/gpu/RESULTS.md), so it must
stay far below that and must not grow with the context.

python -m bench.core_bench [--quick]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from bench.common import console, print_table, write_result
from engine_pod.config import EngineConfig
from engine_pod.engine.core import EngineCore
from engine_pod.engine.request import Request
from engine_pod.model.base import SamplingParams
from engine_pod.model.synthetic import SyntheticModelRunner


def run_case(batch: int, prompt_len: int, steps: int, stop: tuple[str, ...] = ()) -> dict:
    """Median µs of each part of a decode step of `batch` sequences at `prompt_len`+ tokens."""
    cfg = EngineConfig(
        runner="synthetic",
        max_num_seqs=batch,
        max_num_batched_tokens=max(8192, batch * prompt_len),
        max_model_len=prompt_len + steps + 64,
        num_kv_blocks=batch * ((prompt_len + steps + 64) // 16 + 2),
    )
    runner = SyntheticModelRunner(step_delay_s=0.0)
    sent: list[dict] = []
    core = EngineCore(cfg, runner, sent.append)
    rng = random.Random(batch)
    sp = SamplingParams(max_tokens=steps + 8, temperature=0.0, ignore_eos=True, stop=stop)
    for i in range(batch):
        core.add_request(Request(f"r{i}", [rng.randrange(256) for _ in range(prompt_len)], sp))
    parts: dict[str, list[float]] = {"schedule": [], "forward": [], "commit": []}
    rows = 0
    for k in range(steps):
        t0 = time.perf_counter()
        step = core.scheduler.schedule()
        t1 = time.perf_counter()
        sampled = runner.execute(step.work)
        t2 = time.perf_counter()
        core._finish_step(step, sampled, None, 0.0)
        t3 = time.perf_counter()
        sent.clear()
        if k >= 3:  # the prompt steps are done
            rows = len(step.work)
            for name, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                parts[name].append(dt)
    if rows != batch:
        raise RuntimeError(f"{rows} decode rows, not {batch}: the requests did not all run")
    out = {"batch": batch, "prompt_len": prompt_len, "decode_rows": rows, "stop_strings": len(stop)}
    for name, v in parts.items():
        out[f"{name}_us"] = round(statistics.median(v) * 1e6, 1)
    out["core_us"] = round(out["schedule_us"] + out["commit_us"], 1)
    out["core_us_per_row"] = round(out["core_us"] / max(rows, 1), 2)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    steps = 40 if args.quick else 120
    cases = [(8, 512), (64, 512), (64, 1536), (128, 512)]
    results = []
    with console.status("engine core: timing decode steps") as status:
        for b, p in cases:
            for stop in ((), ("\n\n", "END")):
                status.update(
                    f"engine core: batch {b}, {p}-token prompts, {len(stop)} stop strings"
                )
                results.append(run_case(b, p, steps, stop))
    cols = ["batch", "prompt", "stops", "schedule µs", "commit µs", "core µs", "µs/row"]
    rows = [[r["batch"], r["prompt_len"], r["stop_strings"], r["schedule_us"], r["commit_us"],
             r["core_us"], r["core_us_per_row"]] for r in results]  # fmt: skip
    print_table("engine core host time per decode step (light replica's runner)", cols, rows)
    write_result("core", {"steps": steps, "cases": results})


if __name__ == "__main__":
    main()
