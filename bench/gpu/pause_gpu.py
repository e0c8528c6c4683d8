"""Issue 9, item 3: the engine's pause under load, a real engine pod on the GPU over HTTP.

One `python -m engine_pod --device gpu --max-num-seqs 8` process (the tiny default model,
then the Qwen2-0.5B shape with random bf16 weights) serving on loopback:

1. a greedy request (its tokens are the reference for step 5);
2. decode step time with 8 sequences decoding (from the engine's step counter);
3. 20 streaming requests from another process (8 running + 12 waiting), then
   `POST /v1/pause`: every request must end with HTTP 200 and finish_reason "abort", the
   tokens the clients counted must equal the pause response's partial_tokens, and
   `GET /v1/stats` must show kv_used_blocks == 0; pause duration beside the reference
   design's 0.342 s and the target (decode step + 50 ms);
4. `POST /v1/resume` → first token (median of 5, `bench.engine_bench.resume_to_first_token`);
5. after resume, the greedy request of step 1 again: it completes, same tokens.

    python bench/gpu/pause_gpu.py --device gpu --out $OUT/pause.json [--models tiny,05b]
    python bench/gpu/pause_gpu.py --device cpu              # the same on this CPU

The JSON is rewritten after each model, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import time
import traceback
import types

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

try:  # bench.common (imported by bench.engine_bench) needs rich; the device may lack it
    import rich  # noqa: F401
except ImportError:
    _stub = types.ModuleType("bench.common")
    _stub.console = _stub.print_table = _stub.write_result = None
    sys.modules["bench.common"] = _stub

from bench.engine_bench import REFERENCE_PAUSE_S, resume_to_first_token  # noqa: E402
from engine_pod.launcher import EnginePod  # noqa: E402

RUNNING, WAITING = 8, 12
GREEDY_PROMPT = "The quick brown fox"


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

    Like `bench.engine_bench.decode_step_time`, with max_tokens large enough that a fast GPU
    does not finish the sequences before the window ends."""
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
    """R running + W waiting streams from another process (as in production); pause once they stream.

    `bench.engine_bench.pause_under_load` plus the HTTP status of every stream."""
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


def greedy(url: str, max_tokens: int = 32) -> dict:
    body = {
        "prompt": GREEDY_PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
    }
    r = httpx.post(url + "/v1/completions", json=body, timeout=120)
    ch = r.json()["choices"][0] if r.status_code == 200 else {}
    return {
        "status": r.status_code,
        "finish": ch.get("finish_reason"),
        "token_ids": ch.get("token_ids"),
    }


def run_model(name: str, device: str, model: str | None, max_tokens: int, log_path: str) -> dict:
    flags = ["--device", device, "--max-num-seqs", str(RUNNING), "--num-kv-blocks", "1024"]
    flags += ["--max-model-len", str(max_tokens + 24)]
    if model:
        flags += ["--model", model]
    out: dict = {"model": name, "engine_flags": flags}
    t = time.perf_counter()
    pod = EnginePod(*flags, log_path=log_path).start()
    try:
        pod.wait_ready(timeout=600)
        out["ready_s"] = time.perf_counter() - t
        print(f"[{name}] engine ready in {out['ready_s']:.1f}s at {pod.url}", flush=True)
        out["greedy_before"] = greedy(pod.url)
        out["decode"] = asyncio.run(decode_step_time(pod.url, RUNNING, max_tokens))
        print(f"[{name}] decode: {out['decode']}", flush=True)
        p = asyncio.run(pause_under_load(pod.url, RUNNING, WAITING, max_tokens))
        p["decode_step_s"] = out["decode"]["decode_step_s"]
        p["target_s"] = p["decode_step_s"] + 0.05
        p["reference_pause_s"] = REFERENCE_PAUSE_S
        out["pause"] = p
        print(f"[{name}] pause: { {k: v for k, v in p.items() if k != 'client_tokens_each'} }")
        resumed = httpx.post(pod.url + "/v1/resume", timeout=60)
        out["resume_status"] = resumed.status_code
        out["greedy_after_resume"] = greedy(pod.url)
        out["resume"] = asyncio.run(resume_to_first_token(pod.url))
        out["stats_end"] = httpx.get(pod.url + "/v1/stats", timeout=30).json()
    finally:
        pod.stop()
    ga, gb = out["greedy_after_resume"], out["greedy_before"]
    out["checks"] = {
        "all_200": p["all_200"] and p["pause_http_status"] == 200,
        "all_abort": p["all_abort"],
        "aborted_20": p["aborted"] == RUNNING + WAITING,
        "tokens_match": p["tokens_match"],
        "kv_used_after_0": p["kv_used_after"] == 0,
        "not_forced": not p["forced"],
        "greedy_after_resume_completes": ga["status"] == 200
        and ga["finish"] == "length"
        and len(ga["token_ids"] or ()) == 32,
        "greedy_same_tokens": ga["token_ids"] == gb["token_ids"],
    }
    out["ok"] = all(out["checks"].values())
    print(f"[{name}] checks: {out['checks']}", flush=True)
    return out


def device_name(device: str) -> str:
    if device == "cpu":
        return f"cpu: {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"
    try:
        q = ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"]
        return subprocess.run(q, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return device


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="gpu")
    ap.add_argument("--models", default="tiny", help="comma list: tiny, 05b")
    ap.add_argument("--max-tokens", type=int, default=1000, help="per load request")
    ap.add_argument("--model-05b", default="/tmp/qwen05b", help="written if missing")
    ap.add_argument("--out", default=None, help="JSON path")
    ap.add_argument("--log-dir", default=None, help="engine logs (default: next to --out)")
    args = ap.parse_args()
    log_dir = args.log_dir or (os.path.dirname(os.path.abspath(args.out)) if args.out else "/tmp")
    os.makedirs(log_dir, exist_ok=True)
    res: dict = {
        "benchmark": "pause_gpu",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": device_name(args.device),
        "reference_pause_s": REFERENCE_PAUSE_S,
        "python": platform.python_version(),
    }

    def save() -> None:
        if args.out:
            with open(args.out, "w") as f:
                json.dump(res, f, indent=1)

    ok = True
    for name in args.models.split(","):
        model = None
        try:
            if name == "05b":
                model = args.model_05b
                if not os.path.exists(os.path.join(model, "config.json")):
                    from engine_pod.model.random_model import make_random_model

                    t = time.perf_counter()
                    make_random_model(
                        model, hidden=896, layers=24, heads=14, kv_heads=2, intermediate=4864,
                        vocab=151936, dtype="bfloat16", tie_word_embeddings=True,
                    )  # fmt: skip
                    print(f"[05b] wrote {model} in {time.perf_counter() - t:.1f}s", flush=True)
            log = os.path.join(log_dir, f"engine_{name}.log")
            res[name] = run_model(name, args.device, model, args.max_tokens, log)
            ok = ok and res[name]["ok"]
        except Exception as e:
            traceback.print_exc()
            res[name] = {"error": f"{type(e).__name__}: {e}"}
            ok = False
        save()
    res["ok"] = ok
    save()
    print(json.dumps({"ok": ok}), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
