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

from bench.engine_bench import (  # noqa: E402
    REFERENCE_PAUSE_S,
    decode_step_time,
    pause_under_load,
    resume_to_first_token,
)
from engine_pod.launcher import EnginePod  # noqa: E402

RUNNING, WAITING = 8, 12
GREEDY_PROMPT = "The quick brown fox"


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


def run_model(name: str, device: str, model: str | None, max_tokens: int, log_path: str,
              extra: list[str]) -> dict:  # fmt: skip
    flags = ["--device", device, "--max-num-seqs", str(RUNNING), "--num-kv-blocks", "1024"]
    flags += ["--max-model-len", str(max_tokens + 24), *extra]
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
    ap.add_argument("--engine-args", default="", help="more engine flags, e.g. --no-lookahead")
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
            res[name] = run_model(name, args.device, model, args.max_tokens, log,
                                  args.engine_args.split())  # fmt: skip
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
