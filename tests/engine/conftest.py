"""Engine pods shared by the engine tests: real processes, real HTTP, real ZMQ, real Paddle."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from engine_pod.launcher import EnginePod

TOKEN = "test-control-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="session")
def engine(tmp_path_factory) -> Iterator[EnginePod]:
    """The real engine: Paddle runner, embedded tiny model, max_num_seqs 8 (the reference setup)."""
    log = tmp_path_factory.mktemp("engine") / "engine.log"
    pod = EnginePod(
        "--max-num-seqs",
        "8",
        "--num-kv-blocks",
        "256",
        "--block-size",
        "16",
        "--max-model-len",
        "1024",
        env={"RLFLEET_CONTROL_TOKEN": TOKEN},
        log_path=log,
    )
    with pod:
        yield pod


@pytest.fixture(scope="session")
def slow_engine(tmp_path_factory) -> Iterator[EnginePod]:
    """A light replica (synthetic runner) whose every step takes 1.5 s: pauses land mid-step."""
    log = tmp_path_factory.mktemp("slow") / "engine.log"
    pod = EnginePod(
        "--runner",
        "synthetic",
        "--debug-step-delay-ms",
        "1500",
        "--max-num-seqs",
        "4",
        env={"RLFLEET_CONTROL_TOKEN": TOKEN},
        log_path=log,
    )
    with pod:
        yield pod


def control(
    pod: EnginePod, path: str, body: dict | None = None, method: str = "POST", **kw
) -> httpx.Response:
    headers = kw.pop("headers", AUTH)
    return httpx.request(
        method, pod.url + path, json=body, headers=headers, timeout=kw.pop("timeout", 60), **kw
    )


def stats(pod: EnginePod) -> dict:
    r = control(pod, "/v1/stats", method="GET")
    r.raise_for_status()
    return r.json()


@pytest.fixture
def running(engine: EnginePod) -> Iterator[EnginePod]:
    """The shared engine, resumed before and after the test."""
    control(engine, "/v1/resume").raise_for_status()
    yield engine
    control(engine, "/v1/resume").raise_for_status()


@dataclass
class StreamResult:
    """What one streaming client saw."""

    status: int
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reasons: list[str] = field(default_factory=list)
    done: bool = False
    error: dict | None = None
    retry_after: str | None = None
    request_id: str | None = None

    @property
    def finish_reason(self) -> str | None:
        return self.finish_reasons[-1] if self.finish_reasons else None


async def stream_completion(
    client: httpx.AsyncClient,
    pod: EnginePod,
    prompt: str | list[int],
    max_tokens: int = 64,
    on_token: asyncio.Event | None = None,
    result: StreamResult | None = None,
    **extra,
) -> StreamResult:
    """Stream one completion; pass `result` to watch its tokens arrive."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "stream": True, "temperature": 0, **extra}
    async with client.stream("POST", pod.url + "/v1/completions", json=body, timeout=120) as r:
        res = result if result is not None else StreamResult(status=0)
        res.status, res.retry_after = r.status_code, r.headers.get("retry-after")
        res.request_id = r.headers.get("x-request-id")
        if r.status_code != 200:
            await r.aread()
            res.error = r.json().get("error")
            return res
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                res.done = True
                continue
            chunk = json.loads(data)
            if "error" in chunk:
                res.error = chunk["error"]
                continue
            for ch in chunk["choices"]:
                res.token_ids.extend(ch.get("token_ids", []))
                res.text += ch.get("text", "")
                if ch.get("finish_reason"):
                    res.finish_reasons.append(ch["finish_reason"])
            if on_token is not None and res.token_ids:
                on_token.set()
    return res


def complete(pod: EnginePod, prompt: str | list[int], **extra) -> httpx.Response:
    body = {"prompt": prompt, "max_tokens": 16, "temperature": 0, **extra}
    return httpx.post(pod.url + "/v1/completions", json=body, timeout=120)
