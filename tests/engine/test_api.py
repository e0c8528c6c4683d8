"""The OpenAI-compatible API and the control surface's contract: shapes, errors, auth, abort, metrics."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tests.engine.conftest import AUTH, complete, control, stats, stream_completion


def test_completion_shape_and_usage(running):
    r = complete(running, "Hello", max_tokens=8, ignore_eos=True)
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    ch = body["choices"][0]
    assert ch["finish_reason"] == "length" and len(ch["token_ids"]) == 8
    u = body["usage"]
    assert u["completion_tokens"] == 8 and u["total_tokens"] == u["prompt_tokens"] + 8 > 8


def test_streaming_matches_non_streaming(running):
    plain = complete(running, "stream me", max_tokens=12, ignore_eos=True).json()["choices"][0]

    async def go():
        async with httpx.AsyncClient() as c:
            return await stream_completion(c, running, "stream me", max_tokens=12, ignore_eos=True)

    s = asyncio.run(go())
    assert s.status == 200 and s.done and s.finish_reasons == ["length"]
    assert s.token_ids == plain["token_ids"] and s.text == plain["text"]


def test_chat_completion_and_stream(running):
    msgs = [{"role": "user", "content": "hi there"}]
    r = httpx.post(
        running.url + "/v1/chat/completions",
        json={"messages": msgs, "max_tokens": 5, "temperature": 0, "ignore_eos": True},
        timeout=60,
    )
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["completion_tokens"] == 5
    with httpx.stream(
        "POST",
        running.url + "/v1/chat/completions",
        json={
            "messages": msgs,
            "max_tokens": 5,
            "temperature": 0,
            "stream": True,
            "ignore_eos": True,
            "stream_options": {"include_usage": True},
        },
        timeout=60,
    ) as s:
        lines = [ln[6:] for ln in s.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(x) for x in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert chunks[-1]["usage"]["completion_tokens"] == 5
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == body["choices"][0]["message"]["content"]


def test_prompt_token_ids_and_max_tokens_honoured(running):
    r = complete(running, [5, 6, 7, 8], max_tokens=3, ignore_eos=True)
    assert r.status_code == 200 and r.json()["usage"] == {
        "prompt_tokens": 4,
        "completion_tokens": 3,
        "total_tokens": 7,
    }


def test_seeded_sampling_is_reproducible(running):
    a = complete(
        running, "seeded", max_tokens=10, temperature=1.0, seed=1234, ignore_eos=True
    ).json()
    b = complete(
        running, "seeded", max_tokens=10, temperature=1.0, seed=1234, ignore_eos=True
    ).json()
    assert a["choices"][0]["token_ids"] == b["choices"][0]["token_ids"]


def test_stop_string_ends_with_stop(running):
    base = complete(running, "stops", max_tokens=20, ignore_eos=True).json()["choices"][0]
    text = base["text"]
    cut = next(
        (i for i in range(1, len(text)) if text[i].strip() and text[i] not in text[:i]), None
    )
    if cut is None:
        pytest.skip("generated text has no usable stop string")
    r = complete(running, "stops", max_tokens=20, ignore_eos=True, stop=[text[cut]]).json()[
        "choices"
    ][0]
    assert r["finish_reason"] == "stop"
    assert r["text"] == text[:cut]


def test_models_lists_the_served_model(running):
    data = httpx.get(running.url + "/v1/models").json()["data"]
    assert len(data) == 1 and data[0]["id"] and data[0]["max_model_len"] == 1024


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({"prompt": "x", "max_tokens": 10**6}, "exceeds the context length"),
        ({"prompt": "x" * 5000, "max_tokens": 4}, "exceeds the context length"),
        ({"prompt": "x", "n": 2}, "n"),
        ({"prompt": "x", "temperature": -1}, "temperature"),
        ({"prompt": "x", "top_p": 0}, "top_p"),
        ({"prompt": ""}, "prompt"),
        ({"max_tokens": 3}, "prompt"),
        ({"prompt": [999999]}, "token ids"),
    ],
)
def test_bad_requests_get_400_with_a_message(running, body, fragment):
    r = httpx.post(running.url + "/v1/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"]["message"]


def test_malformed_json_gets_400_and_engine_keeps_serving(running):
    for path in ("/v1/completions", "/v1/chat/completions"):
        r = httpx.post(
            running.url + path, content=b"{not json", headers={"content-type": "application/json"}
        )
        assert r.status_code == 400
    for path in ("/v1/pause", "/v1/abort_requests", "/v1/update_weights"):
        r = httpx.post(running.url + path, content=b"[1,2", headers=AUTH)
        assert r.status_code == 400 and "bad body" in r.json()["error"]["message"]
    r = control(running, "/v1/pause", {"timeout_s": -1})
    assert r.status_code == 400
    r = control(running, "/v1/pause", {"stage": "nonsense"})
    assert r.status_code == 400
    assert complete(running, "still alive", max_tokens=2).status_code == 200
    assert stats(running)["kv_used_blocks"] == 0


@pytest.mark.parametrize(
    "method, path",
    [
        ("POST", "/v1/pause"),
        ("POST", "/v1/resume"),
        ("GET", "/v1/is_paused"),
        ("POST", "/v1/abort_requests"),
        ("POST", "/v1/update_weights"),
        ("GET", "/v1/stats"),
    ],
)
def test_control_endpoints_need_the_bearer_token(running, method, path):
    assert httpx.request(method, running.url + path, json={}).status_code == 401
    bad = {"Authorization": "Bearer wrong"}
    assert httpx.request(method, running.url + path, json={}, headers=bad).status_code == 401
    assert control(running, "/v1/is_paused", method="GET").json()["state"] == "running"


def test_abort_requests_by_id_returns_partial_tokens(running):
    async def go():
        async with httpx.AsyncClient() as c:
            first = asyncio.Event()
            t = asyncio.create_task(
                stream_completion(
                    c,
                    running,
                    "abort me",
                    max_tokens=500,
                    ignore_eos=True,
                    request_id="to-abort",
                    on_token=first,
                )
            )
            await asyncio.wait_for(first.wait(), 60)
            r = await c.post(
                running.url + "/v1/abort_requests",
                json={"request_ids": ["to-abort", None, "no-such-id"]},
                headers=AUTH,
            )
            return r, await t

    r, res = asyncio.run(go())
    assert r.status_code == 200
    assert r.json() == {
        "aborted": ["to-abort"],
        "not_found": ["no-such-id"],
    }  # the null id was skipped
    assert res.status == 200 and res.finish_reasons == ["abort"] and 0 < len(res.token_ids) < 500
    assert stats(running)["kv_used_blocks"] == 0


def test_abort_all(running):
    async def go():
        async with httpx.AsyncClient() as c:
            first = asyncio.Event()
            ts = [
                asyncio.create_task(
                    stream_completion(
                        c, running, f"all {i}", max_tokens=500, ignore_eos=True, on_token=first
                    )
                )
                for i in range(3)
            ]
            await asyncio.wait_for(first.wait(), 60)
            r = await c.post(
                running.url + "/v1/abort_requests", json={"abort_all": True}, headers=AUTH
            )
            return r, await asyncio.gather(*ts)

    r, results = asyncio.run(go())
    assert len(r.json()["aborted"]) == 3
    assert all(x.finish_reasons == ["abort"] for x in results)


def test_client_disconnect_frees_kv(running):
    async def go():
        body = {"prompt": "bye", "max_tokens": 900, "stream": True, "ignore_eos": True}
        async with (
            httpx.AsyncClient() as c,
            c.stream("POST", running.url + "/v1/completions", json=body) as r,
        ):
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    break  # leave after the first chunk

    asyncio.run(go())
    for _ in range(100):
        s = stats(running)
        if s["running"] == 0:
            break
        asyncio.run(asyncio.sleep(0.05))
    assert s["running"] == 0 and s["kv_used_blocks"] == 0


def test_health_ready_metrics(running):
    assert httpx.get(running.url + "/health").status_code == 200
    ready = httpx.get(running.url + "/ready")
    assert ready.status_code == 200 and ready.json()["state"] == "running"
    text = httpx.get(running.url + "/metrics").text
    for name in (
        "rlfleet_requests_running",
        "rlfleet_requests_waiting",
        "rlfleet_kv_blocks_used",
        "rlfleet_kv_blocks_total",
        "rlfleet_paused",
        "rlfleet_pause_duration_seconds_bucket",
        "rlfleet_requests_aborted_total",
        "rlfleet_partial_tokens_total",
        "rlfleet_tokens_generated_total",
        "rlfleet_weights_info",
    ):
        assert name in text, name


def test_is_paused_is_503_until_the_engine_is_up(tmp_path):
    """Before the engine process has loaded, there is no state to report: 503, never a guess."""
    from engine_pod.launcher import EnginePod

    pod = EnginePod("--runner", "synthetic", "--start-paused", log_path=tmp_path / "e.log").start()
    try:
        seen = set()
        for _ in range(600):
            try:
                r = httpx.get(pod.url + "/v1/is_paused", timeout=2)
            except httpx.HTTPError:
                asyncio.run(asyncio.sleep(0.01))
                continue
            seen.add(r.status_code)
            if r.status_code == 200:
                assert r.json()["is_paused"] is True and r.json()["state"] == "paused"
                break
            assert r.status_code == 503 and r.json()["error"]["type"] == "engine_unavailable"
        assert 200 in seen
    finally:
        pod.stop()
