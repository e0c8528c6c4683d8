"""A bounded random mix of streams, aborts, disconnects, pauses and resumes: every request gets one answer."""

from __future__ import annotations

import asyncio
import random

import httpx

from tests.engine.conftest import AUTH, stats, stream_completion

N_CLIENTS = 60


def test_every_request_gets_exactly_one_terminal_answer(running):
    rng = random.Random(7)
    outcomes: dict[str, int] = {}

    async def client_task(c: httpx.AsyncClient, i: int) -> None:
        await asyncio.sleep(rng.random() * 2.0)
        rid = f"stress-{i}"
        if rng.random() < 0.7:
            res = await stream_completion(
                c,
                running,
                f"stress {i}",
                max_tokens=rng.randint(1, 80),
                request_id=rid,
                ignore_eos=True,
            )
            if res.status == 200:
                assert res.done and len(res.finish_reasons) == 1, (rid, res)
                kind = res.finish_reasons[0]
            else:
                assert res.status == 503 and res.error["type"] == "engine_paused"
                kind = "refused"
        else:
            r = await c.post(
                running.url + "/v1/completions",
                json={"prompt": f"s{i}", "max_tokens": rng.randint(1, 40), "request_id": rid},
                timeout=120,
            )
            assert r.status_code in (200, 503), r.text
            kind = r.json()["choices"][0]["finish_reason"] if r.status_code == 200 else "refused"
        outcomes[kind] = outcomes.get(kind, 0) + 1

    async def chaos(c: httpx.AsyncClient) -> None:
        for _ in range(12):
            await asyncio.sleep(rng.random() * 0.3)
            action = rng.choice(["pause", "resume", "resume", "abort", "reject"])
            if action == "pause":
                await c.post(running.url + "/v1/pause", json={}, headers=AUTH, timeout=60)
            elif action == "reject":
                await c.post(running.url + "/v1/pause", json={"stage": "reject"}, headers=AUTH)
            elif action == "resume":
                await c.post(running.url + "/v1/resume", headers=AUTH)
            else:
                ids = [f"stress-{rng.randrange(N_CLIENTS)}" for _ in range(3)]
                await c.post(
                    running.url + "/v1/abort_requests", json={"request_ids": ids}, headers=AUTH
                )
        await c.post(running.url + "/v1/resume", headers=AUTH)

    async def main() -> None:
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=100)) as c:
            await asyncio.gather(chaos(c), *(client_task(c, i) for i in range(N_CLIENTS)))

    before = stats(running)
    asyncio.run(main())
    after = stats(running)
    assert sum(outcomes.values()) == N_CLIENTS
    assert set(outcomes) <= {"length", "stop", "abort", "refused"}
    accepted = after["requests_accepted"] - before["requests_accepted"]
    ended = (after["requests_finished"] - before["requests_finished"]) + (
        after["requests_aborted"] - before["requests_aborted"]
    )
    assert accepted == ended == N_CLIENTS - outcomes.get("refused", 0)
    assert after["kv_used_blocks"] == 0 and after["running"] == 0 and after["waiting"] == 0
