"""Streaming load against a pool's replicas, run in a background thread, every request accounted for.

Each client loops: stream a completion from its replica; on 503 (paused) wait
and retry, as an RL rollout worker would; stop when asked. Each request ends in
exactly one of: completed (stop/length), aborted (with its partial tokens),
refused (503 engine_paused), failed (anything else: a bug).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

from e2e.fleet import Replica


@dataclass
class RequestRecord:
    replica: str
    outcome: str  # completed | aborted | refused | failed
    tokens: int = 0
    finish_reason: str | None = None
    detail: str = ""
    started: float = 0.0
    ended: float = 0.0


@dataclass
class LoadReport:
    records: list[RequestRecord] = field(default_factory=list)

    def by_outcome(self) -> Counter:
        return Counter(r.outcome for r in self.records)

    def tokens(self, outcome: str) -> int:
        return sum(r.tokens for r in self.records if r.outcome == outcome)

    def aborted_in(self, t0: float, t1: float) -> list[RequestRecord]:
        return [r for r in self.records if r.outcome == "aborted" and t0 <= r.ended <= t1]


class StreamingLoad:
    """`clients_per_replica` streaming clients on every replica, in a thread of their own."""

    def __init__(
        self,
        replicas: list[Replica],
        clients_per_replica: int = 6,
        max_tokens: int = 400,
        retry_paused_s: float = 0.2,
    ) -> None:
        self.replicas = replicas
        self.clients_per_replica = clients_per_replica
        self.max_tokens = max_tokens
        self.retry_paused_s = retry_paused_s
        self.report = LoadReport()
        self.tokens_seen: Counter = Counter()  # per replica, live
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)

    def start(self) -> StreamingLoad:
        self._thread.start()
        return self

    def stop(self, timeout: float = 120) -> LoadReport:
        """No new requests; wait for those in flight to end."""
        self._stop.set()
        self._thread.join(timeout)
        return self.report

    def wait_streaming(self, min_tokens_per_replica: int = 5, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.tokens_seen[r.pod] >= min_tokens_per_replica for r in self.replicas):
                return
            if not self._thread.is_alive():
                break  # the load thread died: say why below rather than wait out the timeout
            time.sleep(0.05)
        failed = [f"{r.replica}: {r.detail}" for r in self.report.records if r.outcome == "failed"]
        raise TimeoutError(
            f"load did not stream on every replica: tokens {dict(self.tokens_seen)}, "
            f"outcomes {dict(self.report.by_outcome())}, load thread alive: "
            f"{self._thread.is_alive()}, first failures: {failed[:3]}"
        )

    # -- the thread ---------------------------------------------------------------
    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        n = len(self.replicas) * self.clients_per_replica
        async with httpx.AsyncClient(
            limits=httpx.Limits(max_connections=n + 8), timeout=300
        ) as client:
            await asyncio.gather(
                *(
                    self._client(client, r, i)
                    for r in self.replicas
                    for i in range(self.clients_per_replica)
                )
            )

    async def _client(self, client: httpx.AsyncClient, replica: Replica, i: int) -> None:
        n = 0
        while not self._stop.is_set():
            rec = await self._one(client, replica, f"rollout {i}.{n} on {replica.pod}")
            self.report.records.append(rec)
            n += 1
            if rec.outcome in ("refused", "failed"):
                await asyncio.sleep(self.retry_paused_s)

    async def _one(self, client: httpx.AsyncClient, replica: Replica, prompt: str) -> RequestRecord:
        rec = RequestRecord(replica.pod, "failed", started=time.monotonic())
        body = {
            "prompt": prompt,
            "max_tokens": self.max_tokens,
            "stream": True,
            "ignore_eos": True,
            "temperature": 0.8,
        }
        try:
            async with client.stream("POST", replica.url + "/v1/completions", json=body) as r:
                if r.status_code == 503:
                    await r.aread()
                    err = r.json().get("error", {})
                    rec.outcome = "refused" if err.get("type") == "engine_paused" else "failed"
                    rec.detail = err.get("message", "")
                    return rec
                if r.status_code != 200:
                    await r.aread()
                    rec.detail = f"HTTP {r.status_code}: {r.text[:200]}"
                    return rec
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    for ch in chunk.get("choices", []):
                        k = len(ch.get("token_ids", []))
                        rec.tokens += k
                        self.tokens_seen[replica.pod] += k
                        if ch.get("finish_reason"):
                            rec.finish_reason = ch["finish_reason"]
            rec.outcome = {"abort": "aborted", None: "failed"}.get(rec.finish_reason, "completed")
            if rec.outcome == "failed":
                rec.detail = "stream ended without a finish_reason"
        except httpx.HTTPError as e:
            rec.detail = f"{type(e).__name__}: {e}"
        finally:
            rec.ended = time.monotonic()
        return rec
