"""Engine benchmarks on one real engine pod: pause under load, continuous batching vs one-at-a-time, resume.

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
    """One streaming greedy completion; counts the token ids the client received."""
    t0 = time.perf_counter()
    ttft, tokens, finish, status = None, 0, None, None
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
                if ch.get("token_ids") and ttft is None:
                    ttft = time.perf_counter() - t0
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
    """Seconds per engine step with `batch` sequences decoding (engine step counter, 1 s window).

    `max_tokens` must be large enough that a fast GPU does not finish them before the window ends."""
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
        await asyncio.sleep(1.0)
        s1, t1 = await _stats(c, url), time.perf_counter()
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


async def pause_under_load(url: str, running: int, waiting: int, max_tokens: int) -> dict:
    """R running + W waiting streams from another process (as in production); pause once they stream."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    async with httpx.AsyncClient() as c:
        await c.post(url + "/v1/resume")
        worker = ctx.Process(target=_load_worker, args=(url, running + waiting, max_tokens, child))
        worker.start()
        before = None
        for _ in range(3000):
            await asyncio.sleep(0.02)
            before = await _stats(c, url)
            if (
                before["running"] == running
                and before["waiting"] == waiting
                and before["tokens_generated"] > 0
            ):
                break
        await asyncio.sleep(0.2)
        t0 = time.perf_counter()
        resp = await c.post(url + "/v1/pause", json={}, timeout=120)
        wall = time.perf_counter() - t0
        r = resp.json()
        results = await asyncio.to_thread(parent.recv)
        worker.join()
        after = await _stats(c, url)
    client_tokens = sum(x["tokens"] for x in results)
    return {
        "running": running,
        "waiting": waiting,
        "max_tokens": max_tokens,
        "load_seen": {k: before.get(k) for k in ("running", "waiting", "tokens_generated")},
        "pause_http_status": resp.status_code,
        "pause_s": wall,
        "engine_duration_s": r["duration_s"],
        "phases": r.get("phases"),
        "aborted": r["aborted"],
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
        "kv_used_after": after["kv_used_blocks"],
        "stats_after": {
            k: after.get(k)
            for k in ("state", "running", "waiting", "kv_used_blocks", "kv_cached_blocks")
        },
        "forced": r["forced"],
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

    console.rule("engine: pause under load")
    # (running, waiting, max_tokens, engine flags): the reference setup, then a large batch
    setups = [(8, 12, 400, ["--max-num-seqs", "8", "--num-kv-blocks", "1024"])]
    if not args.quick:
        setups.append(
            (
                64,
                128,
                300,
                [
                    "--max-num-seqs",
                    "64",
                    "--num-kv-blocks",
                    "4096",
                    "--max-num-batched-tokens",
                    "2048",
                ],
            )
        )
    rows = []
    for running, waiting, max_tokens, flags in setups:
        with EnginePod(*flags, *extra) as pod:
            step = asyncio.run(decode_step_time(pod.url, running, 200))["decode_step_s"]
            p = asyncio.run(pause_under_load(pod.url, running, waiting, max_tokens))
            p["decode_step_s"] = step
            p["target_s"] = step + 0.05
            out[f"pause_{running}_{waiting}"] = p
            if "resume" not in out:
                out["resume"] = asyncio.run(resume_to_first_token(pod.url))
        rows.append(
            [
                f"{running}+{waiting}",
                p["pause_s"],
                p["engine_duration_s"],
                p["decode_step_s"],
                p["target_s"],
                REFERENCE_PAUSE_S,
                p["aborted"],
                p["partial_tokens"],
                p["client_tokens"],
                f"{p['freed_blocks']}/{p['total_blocks']}",
            ]
        )
    print_table(
        "pause under load (s)",
        [
            "running+waiting",
            "pause (HTTP)",
            "engine",
            "decode step",
            "target (step+50ms)",
            "reference",
            "aborted",
            "partial tok",
            "client tok",
            "freed/total",
        ],
        rows,
    )
    console.print(
        f"resume → first token: {out['resume']['resume_to_first_token_s_median'] * 1000:.1f} ms (median of {out['resume']['trials']})"
    )

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
