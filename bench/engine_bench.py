"""Engine benchmarks on one real engine pod: pause under load in each pause mode (abort,
retract, keep: pause, resume, round trip to the first new token, recompute cost of a
retract, correctness checks), continuous batching vs one-at-a-time, resume.

python -m bench.engine_bench [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time

import httpx

from bench.common import console, print_table, write_result
from engine_pod.launcher import EnginePod
from engine_pod.model.random_model import make_random_model

REFERENCE_PAUSE_S = 0.342  # the design this comes from: 8 running + 12 waiting


async def _stream(client: httpx.AsyncClient, url: str, prompt: str, max_tokens: int) -> dict:
    """One streaming greedy completion; counts the token ids the client received.

    `arrivals`: (time.monotonic(), token count) per chunk with tokens; that clock is
    system-wide, so a parent process can compare it with its own."""
    t0 = time.perf_counter()
    ttft, tokens, finish, status = None, 0, None, None
    arrivals: list[tuple[float, int]] = []
    body = {
        "prompt": prompt,
        "max_tokens": max_tokens,
        "stream": True,
        "temperature": 0,
        "ignore_eos": True,
    }
    try:
        async with client.stream("POST", url + "/v1/completions", json=body, timeout=600) as r:
            status = r.status_code
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                ch = json.loads(line[6:])["choices"][0]
                if ch.get("token_ids"):
                    ttft = time.perf_counter() - t0 if ttft is None else ttft
                    arrivals.append((time.monotonic(), len(ch["token_ids"])))
                tokens += len(ch.get("token_ids") or ())
                finish = ch.get("finish_reason") or finish
    except httpx.HTTPError as e:
        finish = f"error: {type(e).__name__}: {e}"
    return {
        "status": status,
        "tokens": tokens,
        "finish": finish,
        "ttft": ttft,
        "latency": time.perf_counter() - t0,
        "arrivals": arrivals,
    }


def _load_worker(url: str, n: int, max_tokens: int, conn) -> None:
    """Child process: n streaming clients; sends their results back when all have ended."""

    async def run() -> list[dict]:
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=n + 8)) as c:
            return await asyncio.gather(
                *(_stream(c, url, f"load {i}", max_tokens) for i in range(n))
            )

    conn.send(asyncio.run(run()))


async def _stats(c: httpx.AsyncClient, url: str) -> dict:
    return (await c.get(url + "/v1/stats", timeout=30)).json()


async def decode_step_time(url: str, batch: int, max_tokens: int) -> dict:
    """Seconds per engine step with `batch` sequences decoding (engine step counter over a
    1 s window, cut at the last poll before any sequence finished: on a fast GPU `max_tokens`
    may run out within it)."""
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=batch + 4)) as c:
        tasks = [
            asyncio.create_task(_stream(c, url, f"step {i}", max_tokens)) for i in range(batch)
        ]
        for _ in range(1000):  # until all are decoding
            await asyncio.sleep(0.02)
            s = await _stats(c, url)
            if s["running"] == batch and s["tokens_generated"] >= batch:
                break
        await asyncio.sleep(0.2)
        s0, t0 = await _stats(c, url), time.perf_counter()
        s1, t1 = s0, t0
        while t1 - t0 < 1.0:  # the window ends early if a sequence finishes (a fast GPU)
            await asyncio.sleep(0.05)
            s, t = await _stats(c, url), time.perf_counter()
            if s["running"] < batch:
                break
            s1, t1 = s, t
        await c.post(url + "/v1/abort_requests", json={"abort_all": True})
        res = await asyncio.gather(*tasks)
    steps = s1["steps"] - s0["steps"]
    return {
        "decode_step_s": (t1 - t0) / max(1, steps),
        "steps_in_window": steps,
        "running_in_window": s1["running"],
        "tokens_per_s": (s1["tokens_generated"] - s0["tokens_generated"]) / (t1 - t0),
        "max_tokens_seen": max(x["tokens"] for x in res),
    }


async def pause_under_load(
    url: str,
    running: int,
    waiting: int,
    max_tokens: int,
    mode: str = "abort",
    tokens_each: int = 0,
) -> dict:
    """R running + W waiting streams from another process (as in production); pause in `mode`.

    The pause comes 0.2 s after the load streams, or, with `tokens_each`, once the running
    streams have about that many tokens each. Figures and checks per mode:

    - every mode: pause HTTP wall time and the engine's `duration_s`; `kv_used_paused` from
      /v1/stats while paused; the tokens clients received before resume vs the pause's
      `partial_tokens`.
    - abort: every stream ends `abort` with the tokens it had; `resume_s` timed afterwards.
    - retract / keep: `POST /v1/resume` right after the paused stats; `resume_s` (HTTP),
      `resume_to_first_new_token_s` (resume sent → first token of a continued stream, at
      the client), `round_trip_s` = pause HTTP + that; every stream must end stop/length
      with `max_tokens` tokens, none aborted, and the engine must generate exactly
      (R + W) × `max_tokens` tokens (the recompute samples nothing twice);
      `after_resume` = `recompute_cost` of the engine's first steps after resume.
    """
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    resume_s = t_resume = None
    after_resume: dict = {}
    async with httpx.AsyncClient() as c:
        await c.post(url + "/v1/resume")
        start = await _stats(c, url)
        worker = ctx.Process(target=_load_worker, args=(url, running + waiting, max_tokens, child))
        worker.start()
        before = None
        for _ in range(3000):
            await asyncio.sleep(0.02)
            before = await _stats(c, url)
            if (
                before["running"] == running
                and before["waiting"] == waiting
                and before["tokens_generated"] - start["tokens_generated"]
                >= max(1, running * tokens_each)
            ):
                break
        if not tokens_each:
            await asyncio.sleep(0.2)
        t0 = time.perf_counter()
        resp = await c.post(url + "/v1/pause", json={"mode": mode}, timeout=120)
        wall = time.perf_counter() - t0
        r = resp.json()
        paused = await _stats(c, url)
        if mode != "abort":
            t_resume, t1 = time.monotonic(), time.perf_counter()
            await c.post(url + "/v1/resume", timeout=60)
            resume_s = time.perf_counter() - t1
            after_resume = await _steps_after(c, url, paused["steps"], running)
        results = await asyncio.to_thread(parent.recv)
        worker.join()
        after = await _stats(c, url)
        if mode == "abort":
            t1 = time.perf_counter()
            await c.post(url + "/v1/resume", timeout=60)
            resume_s = time.perf_counter() - t1
    client_tokens = sum(x["tokens"] for x in results)
    out = {
        "mode": mode,
        "running": running,
        "waiting": waiting,
        "max_tokens": max_tokens,
        "tokens_each": tokens_each,
        "load_seen": {k: before.get(k) for k in ("running", "waiting", "tokens_generated")},
        "pause_http_status": resp.status_code,
        "pause_s": wall,
        "engine_duration_s": r["duration_s"],
        "phases": r.get("phases"),
        "aborted": r["aborted"],
        "retracted": r.get("retracted", 0),
        "kept": r.get("kept", 0),
        "partial_tokens": r["partial_tokens"],
        "client_tokens": client_tokens,
        "tokens_match": client_tokens == r["partial_tokens"],
        "statuses": sorted({x["status"] for x in results}, key=str),
        "all_200": all(x["status"] == 200 for x in results),
        "finishes": sorted({str(x["finish"]) for x in results}),
        "all_abort": all(x["finish"] == "abort" for x in results),
        "client_tokens_each": [x["tokens"] for x in results],
        "freed_blocks": r["freed_blocks"],
        "total_blocks": r["total_blocks"],
        "kv_used_paused": paused["kv_used_blocks"],
        "kv_used_after": after["kv_used_blocks"],
        "stats_after": {
            k: after.get(k)
            for k in ("state", "running", "waiting", "kv_used_blocks", "kv_cached_blocks")
        },
        "forced": r["forced"],
        "resume_s": resume_s,
    }
    if mode == "abort":
        return out
    # Tokens that reached the clients before resume are those the engine had at the pause.
    firsts = [
        next((t for t, _ in x["arrivals"] if t > t_resume), None)
        for x in results
        if x["arrivals"] and x["arrivals"][0][0] < t_resume
    ]
    first_new = min((t for t in firsts if t is not None), default=None)
    before_resume = sum(n for x in results for t, n in x["arrivals"] if t < t_resume)
    generated = after["tokens_generated"] - start["tokens_generated"]
    out.update(
        client_tokens_at_pause=before_resume,
        tokens_match=before_resume == r["partial_tokens"],
        continued_streams=len(firsts),
        resume_to_first_new_token_s=None if first_new is None else first_new - t_resume,
        round_trip_s=None if first_new is None else wall + first_new - t_resume,
        none_aborted=all(x["finish"] in ("stop", "length") for x in results)
        and after["requests_aborted"] == start["requests_aborted"],
        all_full_length=all(x["tokens"] == max_tokens for x in results),
        engine_generated=generated,
        generated_once=generated == (running + waiting) * max_tokens,
        after_resume=after_resume,
    )
    return out


async def _steps_after(c: httpx.AsyncClient, url: str, step0: int, seqs: int) -> dict:
    """`recompute_cost` of the steps after engine step `step0`, once 16 decode steps (or
    another kind of step: the next wave) follow."""
    for _ in range(500):
        s = await _stats(c, url)
        steps = [x for x in s.get("recent_steps", ()) if x[0] > step0]
        cost = recompute_cost(steps, seqs)
        if (
            cost["decode_steps"] >= 16
            or len(steps) > cost["recompute_steps"] + cost["decode_steps"]
        ):
            return cost
        await asyncio.sleep(0.05)
    return cost


def recompute_cost(steps: list[list], seqs: int) -> dict:
    """Recompute cost from the engine's own step records (/v1/stats `recent_steps`).

    `steps`: [step number, sequences, tokens, forward seconds] of the steps after resume.
    The recompute steps are the leading ones that carry more tokens than sequences (a
    retracted request re-prefills prompt + generated tokens); the decode steps are the
    following ones with `seqs` sequences of one token each. `recompute_tokens` = tokens of
    the recompute steps beyond one per sequence (one per sequence is what decode feeds
    anyway) = the KV tokens the retract freed, ±1 per prompt split across two steps.
    `extra_s` = recompute steps' time − as many decode steps (median);
    `s_per_token` = extra_s / recompute_tokens; `first_step_x_decode` = the first step after
    resume over a decode step. Keep mode has no recompute steps: extra 0, first step ≈ 1×.
    """
    n = 0
    while n < len(steps) and steps[n][2] > steps[n][1]:
        n += 1
    decode = [x[3] for x in steps[n:] if x[1] == seqs and x[2] == seqs]
    decode_s = statistics.median(decode) if decode else None
    tokens = sum(x[2] - x[1] for x in steps[:n])
    extra = sum(x[3] for x in steps[:n]) - n * decode_s if decode_s else None
    return {
        "recompute_steps": n,
        "recompute_tokens": tokens,
        "recompute_s": sum(x[3] for x in steps[:n]),
        "decode_steps": len(decode),
        "decode_step_s": decode_s,
        "extra_s": extra,
        "s_per_token": extra / tokens if tokens and extra is not None else None,
        "token_x_decode": extra / tokens / decode_s if tokens and extra is not None else None,
        "first_step_x_decode": steps[0][3] / decode_s if steps and decode_s else None,
        "steps": steps[: n + 4],
    }


async def throughput(url: str, concurrency: int, max_tokens: int, max_sequential: int = 8) -> dict:
    """Output tokens/s with `concurrency` concurrent streams vs the same requests one at a time."""
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency + 4)) as c:
        t0 = time.perf_counter()
        batched = await asyncio.gather(
            *(_stream(c, url, f"tp {i}", max_tokens) for i in range(concurrency))
        )
        t_batched = time.perf_counter() - t0
        # one-at-a-time baseline on a few requests (its rate is per request anyway)
        n_seq = min(concurrency, max_sequential)
        t0 = time.perf_counter()
        seq = [await _stream(c, url, f"tp {i}", max_tokens) for i in range(n_seq)]
        t_seq = time.perf_counter() - t0
    tps_batched = sum(x["tokens"] for x in batched) / t_batched
    tps_seq = sum(x["tokens"] for x in seq) / t_seq
    return {
        "concurrency": concurrency,
        "tokens_per_s": tps_batched,
        "sequential_tokens_per_s": tps_seq,
        "speedup": tps_batched / tps_seq,
        "ttft_p50_s": statistics.median(x["ttft"] for x in batched),
        "ttft_sequential_s": statistics.median(x["ttft"] for x in seq),
    }


async def resume_to_first_token(url: str, trials: int = 5) -> dict:
    samples = []
    async with httpx.AsyncClient() as c:
        for i in range(trials):
            await c.post(url + "/v1/pause", json={})
            t0 = time.perf_counter()
            await c.post(url + "/v1/resume")
            first = await _stream(c, url, f"resume {i}", 1)
            samples.append(time.perf_counter() - t0)
            assert first["tokens"] == 1
    return {
        "trials": trials,
        "resume_to_first_token_s_median": statistics.median(samples),
        "samples": samples,
    }


def _print_throughput(title: str, rows: list[dict]) -> None:
    print_table(
        title,
        [
            "concurrency",
            "batched tok/s",
            "sequential tok/s",
            "speedup",
            "TTFT p50 (s)",
            "TTFT seq (s)",
        ],
        [
            [
                t["concurrency"],
                t["tokens_per_s"],
                t["sequential_tokens_per_s"],
                t["speedup"],
                t["ttft_p50_s"],
                t["ttft_sequential_s"],
            ]
            for t in rows
        ],
    )


PAUSE_MODES = ("abort", "retract", "keep")


def mode_checks(p: dict) -> dict[str, bool]:
    """What each pause mode promises, checked on one `pause_under_load` result."""
    checks = {
        "all_200": p["all_200"] and p["pause_http_status"] == 200,
        "not_forced": not p["forced"],
        "tokens_at_pause_match": p["tokens_match"],
    }
    if p["mode"] == "abort":
        return checks | {
            "all_abort": p["all_abort"],
            "aborted_all": p["aborted"] == p["running"] + p["waiting"],
            "kv_used_paused_0": p["kv_used_paused"] == 0,
        }
    checks |= {
        "none_aborted": p["none_aborted"],
        "all_max_tokens": p["all_full_length"],
        "generated_once": p["generated_once"],
        "continued_all": p["continued_streams"] == p["running"],
    }
    if p["mode"] == "retract":
        return checks | {
            "retracted_all_running": p["retracted"] == p["running"],
            "kv_used_paused_0": p["kv_used_paused"] == 0,
            "recomputed": p["after_resume"].get("recompute_tokens", 0) > 0,
        }
    return checks | {
        "kept_all_running": p["kept"] == p["running"],
        "kv_kept_paused": p["kv_used_paused"] > 0,
        "no_recompute": p["after_resume"].get("recompute_tokens") == 0,
    }


def _ms(x: float | None) -> str:
    return "—" if x is None else f"{x * 1000:.1f}"


def _print_pause_tables(out: dict) -> None:
    rows, modes, costs = [], [], []
    for row in out["pause_modes"]:
        load = f"{row['running']}+{row['waiting']}"
        a = out[f"pause_{row['running']}_{row['waiting']}"]
        rows.append(
            [load, a["pause_s"], a["engine_duration_s"], a["decode_step_s"], a["target_s"],
             REFERENCE_PAUSE_S, a["aborted"], a["partial_tokens"], a["client_tokens"],
             f"{a['freed_blocks']}/{a['total_blocks']}"]
        )  # fmt: skip
        for mode in PAUSE_MODES:
            p = row[mode]
            settled = {"abort": p["aborted"], "retract": p["retracted"], "keep": p["kept"]}
            failed = [k for k, v in p["checks"].items() if not v]
            modes.append(
                [load, mode, _ms(p["pause_s"]), _ms(p["engine_duration_s"]), _ms(p["resume_s"]),
                 _ms(p.get("resume_to_first_new_token_s")), _ms(p.get("round_trip_s")),
                 settled[mode], p["kv_used_paused"], ",".join(p["finishes"]),
                 f"{p.get('client_tokens_at_pause', p['client_tokens'])}={p['partial_tokens']}",
                 "✓" if not failed else "✗ " + ",".join(failed)]
            )  # fmt: skip
            c = p.get("after_resume")
            if c:
                costs.append(
                    [load, mode, c["recompute_tokens"], c["recompute_steps"],
                     _ms(c["recompute_s"]), _ms(c["decode_step_s"]), _ms(c["extra_s"]),
                     "—" if c["s_per_token"] is None else f"{c['s_per_token'] * 1e6:.1f}",
                     "—" if c["token_x_decode"] is None else f"{c['token_x_decode']:.4f}",
                     "—" if c["first_step_x_decode"] is None else f"{c['first_step_x_decode']:.2f}"]
                )  # fmt: skip
    print_table(
        "pause under load, abort (s)",
        ["running+waiting", "pause (HTTP)", "engine", "decode step", "target (step+50ms)",
         "reference", "aborted", "partial tok", "client tok", "freed/total"],
        rows,
    )  # fmt: skip
    print_table(
        "pause → resume round trip per mode (ms)",
        ["load", "mode", "pause HTTP", "in engine", "resume HTTP", "resume→1st new tok",
         "round trip", "aborted/retracted/kept", "KV used paused", "finish", "tokens client=engine", "checks"],
        modes,
    )  # fmt: skip
    print_table(
        "recompute after resume (engine step records; ms unless noted)",
        ["load", "mode", "recomputed tok", "steps", "their time", "decode step", "extra",
         "µs / token", "token / decode step", "1st step / decode step"],
        costs,
    )  # fmt: skip
    console.print(
        f"resume → first token of a new request: {out['resume']['resume_to_first_token_s_median'] * 1000:.1f} ms (median of {out['resume']['trials']})"
    )


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="smaller load (CI-sized)")
    ap.add_argument("--model", default=None, help="model dir (default: the embedded tiny model)")
    args = ap.parse_args(argv)
    extra = ["--model", args.model] if args.model else []
    out: dict = {
        "model": args.model or "tiny-qwen2 (embedded)",
        "reference_pause_s": REFERENCE_PAUSE_S,
    }
    concurrencies = [1, 8] if args.quick else [1, 8, 32, 64]

    console.rule("engine: pause under load, per pause mode")
    # (running, waiting, max_tokens, tokens each before the pause, engine flags): the
    # reference setup, then a large batch. No prefix cache: a retracted request recomputes
    # all its tokens, as after a weight update (which empties the cache).
    setups = [
        (8, 12, 128 if args.quick else 400, 32 if args.quick else 64,
         ["--max-num-seqs", "8", "--num-kv-blocks", "1024"]),
    ]  # fmt: skip
    if not args.quick:
        setups.append(
            (64, 128, 300, 32, ["--max-num-seqs", "64", "--num-kv-blocks", "4096",
                                "--max-num-batched-tokens", "2048"])
        )  # fmt: skip
    out["pause_modes"] = []
    for running, waiting, max_tokens, tokens_each, flags in setups:
        with EnginePod(*flags, "--no-prefix-cache", *extra) as pod:
            step = asyncio.run(decode_step_time(pod.url, running, 200))["decode_step_s"]
            row: dict = {"running": running, "waiting": waiting, "max_tokens": max_tokens}
            row |= {"tokens_each": tokens_each, "decode_step_s": step, "engine_flags": flags}
            for mode in PAUSE_MODES:
                p = asyncio.run(
                    pause_under_load(pod.url, running, waiting, max_tokens, mode, tokens_each)
                )
                p["checks"] = mode_checks(p)
                p["ok"] = all(p["checks"].values())
                row[mode] = p
            if "resume" not in out:
                out["resume"] = asyncio.run(resume_to_first_token(pod.url))
        out["pause_modes"].append(row)
        # the abort row under its old key, for whatever reads it
        out[f"pause_{running}_{waiting}"] = row["abort"] | {
            "decode_step_s": step,
            "target_s": step + 0.05,
        }
    _print_pause_tables(out)

    console.rule("engine: continuous batching vs one-at-a-time")
    flags = ["--max-num-seqs", "64", "--num-kv-blocks", "4096", "--max-num-batched-tokens", "2048"]
    with EnginePod(*flags, *extra) as pod:
        out["throughput"] = [
            asyncio.run(throughput(pod.url, c, 32 if args.quick else 64)) for c in concurrencies
        ]
    _print_throughput(f"decode throughput, {out['model']} (output tokens/s)", out["throughput"])
    if not args.quick and not args.model:
        # A Qwen2-0.5B-shaped model with random weights (bf16 on disk, float32 on the CPU).
        with tempfile.TemporaryDirectory(prefix="rlfleet-05b-") as tmp:
            with console.status("[cyan]writing a Qwen2-0.5B-shaped random checkpoint…"):
                model = make_random_model(
                    tmp + "/qwen2-0.5b-shape", hidden=896, layers=24, heads=14, kv_heads=2,
                    intermediate=4864, vocab=151936, dtype="bfloat16", tie_word_embeddings=True,
                )  # fmt: skip
            with EnginePod(*flags, "--model", model, "--max-model-len", "256") as pod:
                out["throughput_05b"] = [
                    asyncio.run(throughput(pod.url, c, 16, max_sequential=2)) for c in (1, 8, 32)
                ]
        _print_throughput(
            "decode throughput, Qwen2-0.5B shape (output tokens/s)", out["throughput_05b"]
        )
    write_result("engine", out)
    return out


if __name__ == "__main__":
    main()
