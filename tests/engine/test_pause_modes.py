"""Pause modes (abort / retract / keep), queue admission, checkpoint digests and the
prefix cache across weight versions, on real engine processes over real HTTP (issue 8)."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from engine_pod.launcher import EnginePod
from engine_pod.model.digest import MANIFEST, write_manifest
from engine_pod.model.loader import load_checkpoint
from engine_pod.model.reference import reference_greedy
from engine_pod.model.tiny import ensure_tiny_model
from engine_pod.model.tokenizer import load_tokenizer
from tests.engine.conftest import (
    AUTH,
    TOKEN,
    StreamResult,
    complete,
    control,
    stats,
    stream_completion,
)

BLOCK = 16
SEQS = 4
MAX_TOKENS = 16
QUEUE = 3


# -- fixtures -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, str]:
    """Weights versions by name: the embedded base model and a seed-1 "new policy"."""
    new = tmp_path_factory.mktemp("ckpt") / "step-1"
    return {"base": ensure_tiny_model(), "step-1": ensure_tiny_model(str(new), seed=1)}


class Reference:
    """Reference greedy tokens per weights version, memoized (greedy is prefix-stable)."""

    def __init__(self, ckpts: dict[str, str]) -> None:
        self.models = {name: load_checkpoint(path) for name, path in ckpts.items()}
        self._memo: dict[tuple[str, tuple[int, ...]], list[int]] = {}

    def __call__(self, version: str, ids: list[int], n: int) -> list[int]:
        key = (version, tuple(ids))
        if len(self._memo.get(key, ())) < n:
            self._memo[key] = reference_greedy(self.models[version], ids, n)
        return self._memo[key][:n]


@pytest.fixture(scope="module")
def ref(ckpts) -> Reference:
    return Reference(ckpts)


@pytest.fixture(scope="module")
def tok(ckpts):
    return load_tokenizer(ckpts["base"])


@pytest.fixture(scope="module")
def pod(tmp_path_factory) -> Iterator[EnginePod]:
    """The real engine: 4 seats, 25 ms extra per step (pauses land mid-stream), queue of 3."""
    log = tmp_path_factory.mktemp("modes") / "engine.log"
    with EnginePod(
        "--max-num-seqs", str(SEQS),
        "--num-kv-blocks", "128",
        "--block-size", str(BLOCK),
        "--debug-step-delay-ms", "25",
        "--admission-queue-size", str(QUEUE),
        env={"RLFLEET_CONTROL_TOKEN": TOKEN},
        log_path=log,
    ) as p:  # fmt: skip
        yield p


@pytest.fixture(scope="module")
def slow_pod(tmp_path_factory) -> Iterator[EnginePod]:
    """A light replica whose steps take 400 ms: a short pause timeout lands mid-step."""
    log = tmp_path_factory.mktemp("slow-modes") / "engine.log"
    with EnginePod(
        "--runner", "synthetic",
        "--debug-step-delay-ms", "400",
        "--max-num-seqs", "2",
        env={"RLFLEET_CONTROL_TOKEN": TOKEN},
        log_path=log,
    ) as p:  # fmt: skip
        yield p


# -- helpers ------------------------------------------------------------------------
def use_weights(pod: EnginePod, ckpts: dict[str, str], version: str) -> None:
    """Serve `version` and run: pause (nothing in flight), update if needed, resume."""
    control(pod, "/v1/pause").raise_for_status()
    if control(pod, "/v1/is_paused", method="GET").json()["weights_version"] != version:
        body = {"path": ckpts[version], "version": version}
        control(pod, "/v1/update_weights", body).raise_for_status()
    control(pod, "/v1/resume").raise_for_status()


def manual_digest(ckpt: str) -> str:
    """The documented digest, computed independently: sha256 of a sorted sha256sum listing."""
    names = sorted(["config.json", *(p.name for p in Path(ckpt).glob("*.safetensors"))])
    listing = "".join(
        f"{hashlib.sha256((Path(ckpt) / n).read_bytes()).hexdigest()}  {n}\n" for n in names
    )
    return hashlib.sha256(listing.encode()).hexdigest()


async def ctl(
    client: httpx.AsyncClient, pod: EnginePod, path: str, body: dict | None = None, method="POST"
) -> httpx.Response:
    return await client.request(method, pod.url + path, json=body, headers=AUTH, timeout=60)


async def astats(client: httpx.AsyncClient, pod: EnginePod) -> dict:
    return (await ctl(client, pod, "/v1/stats", method="GET")).json()


async def stat_is(client: httpx.AsyncClient, pod: EnginePod, key: str, value: int) -> bool:
    return (await astats(client, pod))[key] == value


async def wait_for(pred: Callable[[], bool | Awaitable[bool]], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ok = pred()
        if await ok if inspect.isawaitable(ok) else ok:
            return
        await asyncio.sleep(0.02)
    raise TimeoutError("condition not met")


@dataclass
class Rollout:
    """One interrupted rollout: what the pause said, what clients had, how streams ended."""

    start: dict  # stats before
    pause: dict
    before: list[list[int]]  # tokens each client had received when the engine paused
    paused: dict  # stats while paused (after the optional update)
    status: dict  # is_paused (after the optional update)
    updated: dict | None
    resumed: dict
    results: list[StreamResult]
    end: dict  # stats after


async def interrupted_rollout(
    pod: EnginePod, prompts: list[list[int]], pause_body: dict, update: dict | None = None
) -> Rollout:
    """Stream greedy completions, pause once the first wave has tokens, maybe update, resume."""
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=64)) as client:
        start = await astats(client, pod)
        live = [StreamResult(status=0) for _ in prompts]
        tasks = [
            asyncio.create_task(
                stream_completion(client, pod, p, MAX_TOKENS, result=r, ignore_eos=True)
            )
            for p, r in zip(prompts, live, strict=True)
        ]

        async def mid_wave() -> bool:
            s = await astats(client, pod)
            return s["running"] == SEQS and s["tokens_generated"] - start["tokens_generated"] >= 8

        await wait_for(mid_wave)
        r = await ctl(client, pod, "/v1/pause", pause_body)
        assert r.status_code == 200, r.text
        pause = r.json()
        # Every token generated before the pause reaches its client (and no more come).
        await wait_for(lambda: sum(len(x.token_ids) for x in live) == pause["partial_tokens"])
        before = [list(x.token_ids) for x in live]
        updated = None
        if update is not None:
            r = await ctl(client, pod, "/v1/update_weights", update)
            assert r.status_code == 200, r.text
            updated = r.json()
        paused = await astats(client, pod)
        status = (await ctl(client, pod, "/v1/is_paused", method="GET")).json()
        resumed = (await ctl(client, pod, "/v1/resume")).json()
        results = await asyncio.gather(*tasks)
        end = await astats(client, pod)
    return Rollout(start, pause, before, paused, status, updated, resumed, results, end)


def prompts_for(tok, n: int) -> list[list[int]]:
    return [tok.encode(f"rollout {i}: once upon a time") for i in range(n)]


def assert_all_length(results: list[StreamResult]) -> None:
    for r in results:
        assert r.status == 200 and r.done and r.error is None, r
        assert r.finish_reasons == ["length"] and len(r.token_ids) == MAX_TOKENS


def assert_no_leaks(s: dict) -> None:
    assert s["kv_used_blocks"] == 0 and s["running"] == 0 and s["waiting"] == 0
    assert s["requests_accepted"] == s["requests_finished"] + s["requests_aborted"]


def assert_continues_under(ref: Reference, version: str, prompts, rollout: Rollout) -> None:
    """Tokens before the pause are the base model's; the rest continue under `version`."""
    for prompt, before, res in zip(prompts, rollout.before, rollout.results, strict=True):
        assert res.token_ids[: len(before)] == before
        assert before == ref("base", prompt, MAX_TOKENS)[: len(before)]
        rest = ref(version, prompt + before, MAX_TOKENS - len(before))
        assert res.token_ids[len(before) :] == rest


# -- retract ------------------------------------------------------------------------
def test_retract_pause_continues_every_stream_under_new_weights(pod, ckpts, ref, tok):
    use_weights(pod, ckpts, "base")
    prompts = prompts_for(tok, 12)
    update = {"path": ckpts["step-1"], "version": "step-1"}
    run = asyncio.run(interrupted_rollout(pod, prompts, {"mode": "retract"}, update))

    p = run.pause
    assert p["mode"] == "retract" and p["paused"] is True and p["forced"] is False
    assert p["aborted"] == 0 and p["kept"] == 0
    assert p["retracted"] == SEQS and p["waiting"] == len(prompts)
    assert p["used_blocks"] == 0 and p["freed_blocks"] > 0
    assert sum(len(b) for b in run.before) == p["partial_tokens"]  # token counts add up
    assert sum(0 < len(b) < MAX_TOKENS for b in run.before) == SEQS  # truly mid-stream
    assert run.paused["kv_used_blocks"] == 0 and run.paused["waiting"] == len(prompts)
    assert run.updated["retracted"] == 0  # nothing held KV any more
    assert run.status["mode"] == "retract" and run.status["weights_version"] == "step-1"
    assert (run.status["retracted"], run.status["kept"]) == (SEQS, 0)  # per-replica figures
    assert run.status["weights_path"] == ckpts["step-1"]  # where the served weights came from
    assert run.resumed["continued"] == len(prompts)

    assert_all_length(run.results)  # no stream saw an abort
    assert_continues_under(ref, "step-1", prompts, run)
    generated = run.end["tokens_generated"] - run.start["tokens_generated"]
    assert generated == len(prompts) * MAX_TOKENS  # recompute generates nothing twice
    assert run.end["requests_retracted"] - run.start["requests_retracted"] == SEQS
    assert_no_leaks(run.end)


# -- keep ---------------------------------------------------------------------------
def test_keep_pause_resumes_exactly_where_it_stopped(pod, ckpts, ref, tok):
    use_weights(pod, ckpts, "base")
    prompts = prompts_for(tok, 8)
    run = asyncio.run(interrupted_rollout(pod, prompts, {"mode": "keep"}))

    p = run.pause
    assert p["mode"] == "keep" and p["forced"] is False
    assert p["kept"] == SEQS and p["waiting"] == len(prompts) - SEQS
    assert p["aborted"] == 0 and p["retracted"] == 0 and p["freed_blocks"] == 0
    # used blocks == what the kept requests hold: KV of prompt + generated, less the last token
    kept = [(pr, b) for pr, b in zip(prompts, run.before, strict=True) if b]
    held = sum(-(-(len(pr) + len(b) - 1) // BLOCK) for pr, b in kept)
    assert p["used_blocks"] == run.paused["kv_used_blocks"] == held > 0
    assert run.status["mode"] == "keep" and run.status["is_paused"] is True
    assert (run.status["retracted"], run.status["kept"]) == (0, SEQS)

    assert_all_length(run.results)
    for prompt, res in zip(prompts, run.results, strict=True):  # as if never paused
        assert res.token_ids == ref("base", prompt, MAX_TOKENS)
    assert_no_leaks(run.end)


def test_weight_update_while_kept_retracts_and_recomputes(pod, ckpts, ref, tok):
    use_weights(pod, ckpts, "base")
    prompts = prompts_for(tok, 6)
    update = {"path": ckpts["step-1"], "version": "step-1"}
    run = asyncio.run(interrupted_rollout(pod, prompts, {"mode": "keep"}, update))

    assert run.pause["kept"] == SEQS and run.pause["used_blocks"] > 0
    assert run.updated["retracted"] == SEQS and run.updated["mode"] == "retract"
    assert run.paused["kv_used_blocks"] == 0 and run.paused["kv_cached_blocks"] == 0
    assert run.status["mode"] == "retract"
    assert (run.status["retracted"], run.status["kept"]) == (SEQS, 0)  # kept ones now retracted
    assert_all_length(run.results)
    assert_continues_under(ref, "step-1", prompts, run)
    assert_no_leaks(run.end)


# -- forced (timeout_s passed while a step runs) --------------------------------------
@pytest.mark.parametrize("mode", ["retract", "keep"])
def test_forced_pause_drops_the_late_step_and_streams_still_finish(slow_pod, mode):
    control(slow_pod, "/v1/resume").raise_for_status()

    async def scenario():
        async with httpx.AsyncClient() as client:
            tasks = [
                asyncio.create_task(stream_completion(client, slow_pod, f"forced {i}", 3))
                for i in range(2)
            ]
            await wait_for(lambda: stat_is(client, slow_pod, "running", 2))
            await asyncio.sleep(0.1)  # a 400 ms step is in flight
            body = {"mode": mode, "timeout_s": 0.05}
            pause = (await ctl(client, slow_pod, "/v1/pause", body)).json()
            paused = await astats(client, slow_pod)
            await ctl(client, slow_pod, "/v1/resume")
            return pause, paused, await asyncio.gather(*tasks)

    pause, paused, results = asyncio.run(scenario())
    assert pause["forced"] is True and pause["mode"] == mode and pause["aborted"] == 0
    assert pause["duration_s"] < 0.4  # answered before the late step ended
    if mode == "retract":
        assert pause["retracted"] == 2 and paused["kv_used_blocks"] == 0
    else:
        assert pause["kept"] == 2 and paused["kv_used_blocks"] == pause["used_blocks"] > 0
    for r in results:
        assert r.status == 200 and r.finish_reasons == ["length"] and len(r.token_ids) == 3
    s = stats(slow_pod)
    assert s["kv_used_blocks"] == 0
    assert s["requests_accepted"] == s["requests_finished"] + s["requests_aborted"]


# -- admission queue ----------------------------------------------------------------
def test_queue_admission_holds_requests_until_resume(pod, ckpts, ref, tok):
    use_weights(pod, ckpts, "base")
    prompts = prompts_for(tok, QUEUE + 1)

    async def scenario():
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=32)) as client:
            first = asyncio.Event()
            inflight = asyncio.create_task(
                stream_completion(
                    client, pod, "in flight", MAX_TOKENS, on_token=first, ignore_eos=True
                )
            )
            await asyncio.wait_for(first.wait(), 30)
            pause = (await ctl(client, pod, "/v1/pause", {"admission": "queue"})).json()
            status = (await ctl(client, pod, "/v1/is_paused", method="GET")).json()

            def held_stream(i: int, live: StreamResult) -> asyncio.Task:
                return asyncio.create_task(
                    stream_completion(
                        client, pod, prompts[i], 8, result=live, request_id=f"held-{i}"
                    )
                )

            live = [StreamResult(status=0) for _ in prompts]
            held = [held_stream(i, live[i]) for i in range(QUEUE - 1)]
            body = {"prompt": prompts[QUEUE - 1], "max_tokens": 8, "temperature": 0}
            plain = client.post(pod.url + "/v1/completions", json=body, timeout=60)
            held.append(asyncio.create_task(plain))
            await wait_for(lambda: stat_is(client, pod, "held", QUEUE))
            over = await client.post(pod.url + "/v1/completions", json=body)
            waiting_headers = [x.status for x in live[: QUEUE - 1]]
            # a held request can be aborted: it gets its one answer and frees its slot
            await ctl(client, pod, "/v1/abort_requests", {"request_ids": ["held-0"]})
            dropped = await held[0]
            held[0] = held_stream(QUEUE, live[QUEUE])
            await wait_for(lambda: stat_is(client, pod, "held", QUEUE))
            done_early = [t.done() for t in held]
            resumed = (await ctl(client, pod, "/v1/resume")).json()
            return (
                await inflight, pause, status, over, waiting_headers, dropped, done_early,
                resumed, await asyncio.gather(*held),
            )  # fmt: skip

    inflight, pause, status, over, waiting_headers, dropped, done_early, resumed, results = (
        asyncio.run(scenario())
    )
    # an abort-mode pause still aborts what is in flight ...
    assert inflight.finish_reasons == ["abort"] and pause["aborted"] == 1
    assert status["mode"] == "abort" and status["admission"] == "queue"
    # ... while new arrivals wait (stream headers too) up to the bound, then get 503
    assert waiting_headers == [0] * (QUEUE - 1) and not any(done_early)
    assert over.status_code == 503 and over.headers["retry-after"]
    assert over.json()["error"]["type"] == "admission_queue_full"
    assert "admission queue is full" in over.json()["error"]["message"]
    assert dropped.status == 200 and dropped.finish_reasons == ["abort"] and not dropped.token_ids
    assert resumed["admitted"] == QUEUE
    *streams, plain = results
    for r in streams:
        assert r.status == 200 and r.finish_reasons == ["length"] and len(r.token_ids) == 8
    assert plain.status_code == 200
    choice = plain.json()["choices"][0]
    assert choice["token_ids"] == ref("base", prompts[QUEUE - 1], 8)
    assert_no_leaks(stats(pod))


def test_pause_body_is_validated(pod):
    for body in ({"mode": "freeze"}, {"admission": "later"}, {"mode": 3}):
        r = control(pod, "/v1/pause", body)
        assert r.status_code == 400, r.text
    st = control(pod, "/v1/is_paused", method="GET").json()
    assert st["state"] == "running" and st["mode"] is None and st["admission"] is None


# -- checkpoint digest --------------------------------------------------------------
def test_digest_mismatch_is_refused_and_old_weights_keep_serving(pod, ckpts):
    use_weights(pod, ckpts, "base")
    st = control(pod, "/v1/is_paused", method="GET").json()
    assert st["weights_digest"] == manual_digest(ckpts["base"])  # computed at start
    prompt = "digest decides"
    before = complete(pod, prompt, ignore_eos=True).json()["choices"][0]["token_ids"]

    control(pod, "/v1/pause").raise_for_status()
    body = {"path": ckpts["step-1"], "version": "step-1"}
    r = control(pod, "/v1/update_weights", {**body, "digest": "0" * 64})
    assert r.status_code == 400 and "digest mismatch" in r.json()["error"]["message"]
    assert "old weights kept" in r.json()["error"]["message"]
    assert control(pod, "/v1/update_weights", {**body, "digest": "xyz"}).status_code == 400
    after = control(pod, "/v1/is_paused", method="GET").json()
    assert (after["weights_version"], after["weights_digest"]) == ("base", st["weights_digest"])
    control(pod, "/v1/resume").raise_for_status()
    assert complete(pod, prompt, ignore_eos=True).json()["choices"][0]["token_ids"] == before

    control(pod, "/v1/pause").raise_for_status()
    digest = manual_digest(ckpts["step-1"])
    r = control(pod, "/v1/update_weights", {**body, "digest": digest.upper()})
    assert r.status_code == 200, r.text
    assert r.json()["weights_digest"] == digest
    st = control(pod, "/v1/is_paused", method="GET").json()
    assert (st["weights_version"], st["weights_digest"]) == ("step-1", digest)
    control(pod, "/v1/resume").raise_for_status()


def test_checkpoint_manifest_is_verified(pod, ckpts, tmp_path):
    good, bad = tmp_path / "good", tmp_path / "bad"
    shutil.copytree(ckpts["step-1"], good)
    assert write_manifest(str(good)) == manual_digest(str(good))
    shutil.copytree(good, bad)
    manifest = json.loads((bad / MANIFEST).read_text())
    manifest["files"]["model.safetensors"] = "1" * 64
    (bad / MANIFEST).write_text(json.dumps(manifest))

    control(pod, "/v1/pause").raise_for_status()
    r = control(pod, "/v1/update_weights", {"path": str(bad), "version": "bad"})
    assert r.status_code == 400 and MANIFEST in r.json()["error"]["message"]
    r = control(pod, "/v1/update_weights", {"path": str(good), "version": "good"})
    assert r.status_code == 200 and r.json()["weights_digest"] == manual_digest(str(good))
    use_weights(pod, ckpts, "base")


# -- prefix cache by weights version -------------------------------------------------
def test_prefix_cache_never_crosses_a_weights_version(pod, ckpts, ref, tok):
    use_weights(pod, ckpts, "base")
    prompt = tok.encode("You are a careful assistant. Think step by step, then answer. " * 2)
    cached = (len(prompt) - 1) // BLOCK * BLOCK
    assert cached >= 3 * BLOCK
    first = complete(pod, prompt, max_tokens=8, ignore_eos=True).json()["choices"][0]
    h0 = stats(pod)["prefix_hit_tokens"]
    again = complete(pod, prompt, max_tokens=8, ignore_eos=True).json()["choices"][0]
    assert again["token_ids"] == first["token_ids"]
    assert stats(pod)["prefix_hit_tokens"] == h0 + cached  # the cache works within a version

    control(pod, "/v1/pause", {"mode": "retract"}).raise_for_status()  # keeps the cache
    assert stats(pod)["kv_cached_blocks"] >= cached // BLOCK
    body = {"path": ckpts["step-1"], "version": "step-1"}
    control(pod, "/v1/update_weights", body).raise_for_status()
    control(pod, "/v1/resume").raise_for_status()
    h1 = stats(pod)["prefix_hit_tokens"]
    new = complete(pod, prompt, max_tokens=8, ignore_eos=True).json()["choices"][0]
    assert stats(pod)["prefix_hit_tokens"] == h1  # recomputed, no hit across the version
    assert new["token_ids"] == ref("step-1", prompt, 8)
    assert new["token_ids"] != first["token_ids"]
    complete(pod, prompt, max_tokens=8, ignore_eos=True)
    assert stats(pod)["prefix_hit_tokens"] == h1 + cached  # and caching resumes under step-1
