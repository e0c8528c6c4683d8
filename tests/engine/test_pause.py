"""The two-phase pause under load, on the real engine (SPEC §1, issue #2 semantics 1-6)."""

from __future__ import annotations

import asyncio

import httpx

from tests.engine.conftest import (
    StreamResult,
    complete,
    control,
    stats,
    stream_completion,
)

N_REQUESTS = 20  # 8 running (max_num_seqs) + 12 waiting, as in the reference run


async def _load_then_pause(pod, min_tokens_each: int = 3) -> tuple[list[StreamResult], dict]:
    """20 long streams; pause once the 8 running ones have streamed tokens; return what clients saw."""
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(limits=limits) as client:
        tasks = [
            asyncio.create_task(
                stream_completion(
                    client, pod, f"request {i}: tell me a story", max_tokens=600, ignore_eos=True
                )
            )
            for i in range(N_REQUESTS)
        ]
        for _ in range(600):  # until the running batch is full and has produced tokens
            await asyncio.sleep(0.05)
            s = (
                await client.get(
                    pod.url + "/v1/stats", headers={"Authorization": "Bearer test-control-token"}
                )
            ).json()
            if (
                s["running"] == 8
                and s["waiting"] == N_REQUESTS - 8
                and s["tokens_generated"] >= 8 * min_tokens_each
            ):
                break
        r = await client.post(
            pod.url + "/v1/pause",
            json={},
            headers={"Authorization": "Bearer test-control-token"},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        results = await asyncio.gather(*tasks)
    return results, r.json()


def test_pause_under_load_aborts_everything_with_partial_tokens(running):
    before = stats(running)
    results, pause = asyncio.run(_load_then_pause(running))

    # 1. every request: HTTP 200, exactly one finish_reason, "abort", stream closed with [DONE]
    assert all(r.status == 200 for r in results), [r.error for r in results]
    assert all(r.finish_reasons == ["abort"] and r.done for r in results)
    with_tokens = [r for r in results if r.token_ids]
    without = [r for r in results if not r.token_ids]
    assert len(with_tokens) == 8  # the running ones keep every token they had
    assert len(without) == N_REQUESTS - 8  # the waiting ones end with zero tokens
    client_tokens = sum(len(r.token_ids) for r in results)
    assert pause["aborted"] == N_REQUESTS
    assert pause["partial_tokens"] == client_tokens  # nothing generated was lost on the way
    assert pause["paused"] is True and pause["forced"] is False

    # 2. the KV cache is empty: used 0, free == total
    assert pause["freed_blocks"] > 0
    after = stats(running)
    assert after["kv_used_blocks"] == 0 and after["kv_cached_blocks"] == 0
    assert after["state"] == "paused" and after["running"] == 0 and after["waiting"] == 0
    assert after["tokens_generated"] - before["tokens_generated"] == client_tokens
    # every accepted request got exactly one terminal answer
    assert after["requests_accepted"] == after["requests_finished"] + after["requests_aborted"]


def test_requests_while_paused_get_503_with_retry_after(running):
    control(running, "/v1/pause").raise_for_status()
    for path, body in (
        ("/v1/completions", {"prompt": "hi", "max_tokens": 4}),
        ("/v1/completions", {"prompt": "hi", "max_tokens": 4, "stream": True}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
    ):
        r = httpx.post(running.url + path, json=body, timeout=30)
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"]
        assert r.json()["error"]["type"] == "engine_paused"


def test_reject_stage_closes_admission_but_keeps_inflight(running):
    async def scenario():
        async with httpx.AsyncClient() as client:
            first = asyncio.Event()
            task = asyncio.create_task(
                stream_completion(client, running, "keep going", max_tokens=40, on_token=first)
            )
            await asyncio.wait_for(first.wait(), 60)
            r = await client.post(
                running.url + "/v1/pause",
                json={"stage": "reject"},
                headers={"Authorization": "Bearer test-control-token"},
            )
            assert r.status_code == 200 and r.json()["state"] == "rejecting"
            refused = await stream_completion(client, running, "new one", max_tokens=4)
            return await task, refused

    inflight, refused = asyncio.run(scenario())
    assert refused.status == 503 and refused.error["type"] == "engine_paused"
    # the in-flight request was not aborted by the reject stage: it ran to its length
    assert inflight.finish_reason == "length" and len(inflight.token_ids) == 40
    assert control(running, "/v1/is_paused", method="GET").json()["state"] == "rejecting"


def test_pause_and_resume_are_idempotent(running):
    r1 = control(running, "/v1/pause")
    r2 = control(running, "/v1/pause")
    assert r1.status_code == r2.status_code == 200
    assert r1.json()["already_paused"] is False and r2.json()["already_paused"] is True
    assert control(running, "/v1/is_paused", method="GET").json()["is_paused"] is True
    a = control(running, "/v1/resume")
    b = control(running, "/v1/resume")
    assert a.status_code == b.status_code == 200
    assert a.json()["resumed"] is True and b.json()["already_running"] is True
    st = control(running, "/v1/is_paused", method="GET").json()
    assert st == {**st, "is_paused": False, "state": "running"}


def test_greedy_output_after_resume_equals_before(running):
    prompt = "The quick brown fox"
    before = complete(running, prompt, max_tokens=24)
    assert before.status_code == 200
    control(running, "/v1/pause").raise_for_status()
    control(running, "/v1/resume").raise_for_status()
    after = complete(running, prompt, max_tokens=24)
    assert after.status_code == 200
    b, a = before.json()["choices"][0], after.json()["choices"][0]
    assert a["token_ids"] == b["token_ids"] and len(a["token_ids"]) > 0
    assert a["text"] == b["text"]


def test_pause_mid_step_with_aborts_in_flight_does_not_deadlock(slow_engine):
    """A step takes 1.5 s; pause (timeout 0.2 s) lands mid-step while aborts race it: forced, answered."""
    control(slow_engine, "/v1/resume").raise_for_status()

    async def scenario():
        async with httpx.AsyncClient() as client:
            streams = [
                asyncio.create_task(
                    stream_completion(
                        client, slow_engine, f"slow {i}", max_tokens=50, request_id=f"slow-{i}"
                    )
                )
                for i in range(6)
            ]
            for _ in range(200):
                await asyncio.sleep(0.05)
                if stats(slow_engine)["running"] == 4:
                    break
            # A step boundary: the step counter moves as one 1.5 s step ends and the next
            # (4 running) begins, so the pause below lands well inside a step, even when a
            # loaded machine is slow to poll.
            steps = stats(slow_engine)["steps"]
            for _ in range(200):
                await asyncio.sleep(0.02)
                if stats(slow_engine)["steps"] != steps:
                    break
            await asyncio.sleep(0.1)  # a step is in flight now
            auth = {"Authorization": "Bearer test-control-token"}
            abort = client.post(
                slow_engine.url + "/v1/abort_requests",
                json={"request_ids": ["slow-0", "slow-5"]},
                headers=auth,
            )
            pause = client.post(
                slow_engine.url + "/v1/pause", json={"timeout_s": 0.2}, headers=auth, timeout=30
            )
            draining_probe = stream_completion(client, slow_engine, "during drain", max_tokens=2)
            ra, rp, probe = await asyncio.gather(abort, pause, draining_probe)
            return ra, rp, probe, await asyncio.gather(*streams)

    ra, rp, probe, results = asyncio.run(scenario())
    assert ra.status_code == 200
    assert rp.status_code == 200, rp.text
    p = rp.json()
    assert p["forced"] is True and p["paused"] is True
    assert p["duration_s"] < 1.5  # answered before the stuck step ended
    assert probe.status == 503 and probe.error["type"] == "engine_paused"
    assert all(r.status == 200 and r.finish_reasons == ["abort"] for r in results)
    s = stats(slow_engine)
    assert s["kv_used_blocks"] == 0 and s["state"] == "paused"
    assert s["requests_accepted"] == s["requests_aborted"] + s["requests_finished"]
    # the late step's results were dropped and the engine still works after resume
    control(slow_engine, "/v1/resume").raise_for_status()
    r = httpx.post(
        slow_engine.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1}, timeout=30
    )
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "length"
