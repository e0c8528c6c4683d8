"""The engine core's own host time per decode step (everything but the forward).

A real `EngineCore` (scheduler, block manager with the prefix cache, output processor with
the tiny model's byte-level tokenizer) drives the light replica's runner with no step delay,
so what is timed is the core's Python work a step: scheduling the batch, committing the
sampled tokens (prefix-cache registration of full blocks), detokenizing and the stop rules.
On a GPU this work runs between two forwards of ~1-2 ms (bench/gpu/RESULTS.md), so it must
stay far below that and must not grow with the context. Then the engine's own loop on its
thread with a 1.4 ms device step: how much host time per step is not hidden behind it.

python -m bench.core_bench [--quick]
"""

from __future__ import annotations

import argparse
import random
import statistics
import threading
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


class _SerialRunner(SyntheticModelRunner):
    """The same runner without `launch`: the core computes each step, then does its host
    work (the loop before this round, and any runner that cannot start a step async)."""

    def launch(self, batch, feed=False):  # type: ignore[override]
        return None


LOOP_MODES = ("serial", "async launch", "look-ahead")


def loop_step_ms(batch: int, device_ms: float, seconds: float = 1.5, mode: str = "serial") -> dict:
    """Wall ms a decode step of the engine's own loop (`run_loop` on its thread), the runner
    standing in for a GPU whose step takes `device_ms` (the light replica's runner with that
    delay). `serial`: the core computes each step, then does its host work; `async launch`:
    the step is launched like the GPU runner's graph steps and the last step's messages are
    made meanwhile; `look-ahead`: also the next step is scheduled and launched before this
    one's tokens are back (commit, scheduling and messages all overlap the device)."""
    cfg = EngineConfig(runner="synthetic", max_num_seqs=batch, max_num_batched_tokens=1 << 16,
                       max_model_len=2048, num_kv_blocks=batch * 130,
                       lookahead=mode == "look-ahead")  # fmt: skip
    runner_cls = _SerialRunner if mode == "serial" else SyntheticModelRunner
    runner = runner_cls(step_delay_s=device_ms / 1000)
    core = EngineCore(cfg, runner, lambda msg: None)
    loop = threading.Thread(target=core.run_loop, daemon=True)
    loop.start()
    rng = random.Random(batch)
    sp = SamplingParams(max_tokens=1500, temperature=0.0, ignore_eos=True)
    for i in range(batch):
        core.add_request(Request(f"r{i}", [rng.randrange(256) for _ in range(256)], sp))
    time.sleep(0.3)  # prompts done
    s0, t0 = core.counters.steps, time.perf_counter()
    time.sleep(seconds)
    s1, t1 = core.counters.steps, time.perf_counter()
    core.stop()
    loop.join(5)
    step_ms = (t1 - t0) / max(1, s1 - s0) * 1e3
    return {"batch": batch, "device_ms": device_ms, "mode": mode,
            "loop_step_ms": round(step_ms, 3), "host_ms_not_hidden": round(step_ms - device_ms, 3)}  # fmt: skip


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
    loops = []
    with console.status("engine loop with a 1.4 ms device step"):
        for b in (8, 64, 128):
            for mode in LOOP_MODES:
                loops.append(loop_step_ms(b, 1.4, 0.5 if args.quick else 1.5, mode))
    print_table(
        "the engine's loop, device step 1.4 ms: serial, launched asynchronously, look-ahead",
        ["batch", "runner", "loop ms a step", "host ms not hidden"],
        [
            [
                r["batch"],
                r["mode"],
                r["loop_step_ms"],
                r["host_ms_not_hidden"],
            ]
            for r in loops
        ],
    )
    write_result("core", {"steps": steps, "cases": results, "loop": loops})


if __name__ == "__main__":
    main()
