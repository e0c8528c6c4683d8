"""The engine loop sends a step's messages while the next step runs on the device.

A real `EngineCore` and its loop thread, the light replica's runner launched like the GPU
runner's graph steps (its step delay elapses while the core works): every request's stream
still carries each token once, in order, and ends with exactly one terminal message — also
when an abort or a pause lands between a token's commit and its message.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import pytest

from engine_pod.config import EngineConfig
from engine_pod.engine.core import EngineCore
from engine_pod.engine.request import Request
from engine_pod.model.base import SamplingParams
from engine_pod.model.synthetic import SyntheticModelRunner


class Stream:
    """Messages as the API server gets them, per request."""

    def __init__(self) -> None:
        self.items: dict[str, list[dict]] = defaultdict(list)
        self.lock = threading.Lock()

    def __call__(self, msg: dict) -> None:
        if msg.get("kind") == "out":
            with self.lock:
                for it in msg["items"]:
                    self.items[it["id"]].append(it)

    def check(self, core_requests: dict[str, Request]) -> dict[str, str]:
        """Each stream: tokens = the request's output, one terminal message, last."""
        reasons = {}
        for rid, req in core_requests.items():
            msgs = self.items[rid]
            assert [t for m in msgs for t in m["t"]] == req.output_token_ids, rid
            ends = [i for i, m in enumerate(msgs) if m["f"]]
            assert ends == [len(msgs) - 1], (rid, ends)
            reasons[rid] = msgs[-1]["f"]
        return reasons


def start(
    runner: SyntheticModelRunner, n: int, max_tokens: int, lookahead: bool = True
) -> tuple[EngineCore, Stream, dict]:
    """A core on its loop thread with `n` requests of `max_tokens` tokens each."""
    stream = Stream()
    config = EngineConfig(
        runner="synthetic", max_num_seqs=n, num_kv_blocks=64 * n, lookahead=lookahead
    )
    core = EngineCore(config, runner, stream)
    threading.Thread(target=core.run_loop, daemon=True).start()
    reqs = {}
    for i in range(n):
        r = Request(f"r{i}", [5 + i, 6, 7], SamplingParams(max_tokens=max_tokens, ignore_eos=True))
        core.add_request(r)
        reqs[r.request_id] = r
    return core, stream, reqs


def wait_for(cond, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.002)


def test_streams_complete_and_in_order_when_requests_finish() -> None:
    core, stream, reqs = start(SyntheticModelRunner(step_delay_s=0.002), 6, 25)
    wait_for(lambda: all(r.is_finished for r in reqs.values()))
    wait_for(lambda: all(m and m[-1]["f"] for m in (stream.items[i] for i in reqs)))
    core.stop()
    assert set(stream.check(reqs).values()) == {"length"}
    assert all(len(r.output_token_ids) == 25 for r in reqs.values())


class GatedRunner(SyntheticModelRunner):
    """Launches wait at a gate the test opens: the core is then between a step's commit and
    its messages (they go out once the next step is launched)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.proceed = threading.Event()
        self.armed = False

    def launch(self, batch, feed=False):
        if self.armed:
            self.armed = False
            self.entered.set()
            self.proceed.wait(10)
        return super().launch(batch, feed)


@pytest.mark.parametrize("how", ["abort", "pause"])
def test_an_abort_between_commit_and_message_keeps_the_stream_whole(how: str) -> None:
    """Aborted (by id, or by a pause in abort mode forced past its timeout) while the last
    step's tokens are committed but their messages not yet sent: those messages go out
    first, then exactly one abort per request, no token twice or missing. (Without
    look-ahead steps: with them the messages go out before the next launch; test_lookahead.)"""
    runner = GatedRunner()
    core, stream, reqs = start(runner, 4, 10_000, lookahead=False)
    wait_for(lambda: all(len(r.output_token_ids) >= 5 for r in reqs.values()))
    runner.armed = True
    assert runner.entered.wait(10)
    assert core._deferred  # the window under test: committed, not yet sent
    if how == "abort":
        assert sorted(core.abort(list(reqs))[0]) == sorted(reqs)
    else:  # the step in launch outlives the timeout: forced, its results dropped
        assert core.pause(timeout_s=0.05, mode="abort")["aborted"] == 4
    runner.proceed.set()
    wait_for(lambda: all(m and m[-1]["f"] for m in (stream.items[i] for i in reqs)))
    core.stop()
    assert set(stream.check(reqs).values()) == {"abort"}
