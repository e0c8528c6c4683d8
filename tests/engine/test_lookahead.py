"""Look-ahead decode steps: the next step is scheduled and launched while one runs.

A real `EngineCore` on its loop thread with the light replica's runner (its step delay
elapses while the core works, and a `feed` launch takes each input token from the step
launched before it, as the GPU runner does on the device). What users rely on: the same
tokens as stepping one at a time, each stream whole with one terminal message, KV freed —
also when a request ends (EOS, max_tokens, an abort, a pause) with a look-ahead row in flight.
"""

from __future__ import annotations

import threading

import pytest

from engine_pod.config import EngineConfig
from engine_pod.engine.core import EngineCore
from engine_pod.engine.kv_cache import BlockManager
from engine_pod.engine.request import Request, RequestStatus
from engine_pod.engine.scheduler import Scheduler
from engine_pod.model.base import FEED_TOKEN, SamplingParams
from engine_pod.model.synthetic import SyntheticModelRunner
from tests.engine.test_core_overlap import Stream, wait_for


class EosRunner(SyntheticModelRunner):
    """The light replica, except that a request whose seed is `p` samples EOS at position
    `p`: requests stop mid-stream on their own token, as real ones do."""

    def _token(self, last: int, position: int, seed: int | None) -> int:
        if seed is not None and position == seed:
            return self.info.eos_token_id
        return super()._token(last, position, seed)


class GatedRunner(EosRunner):
    """Look-ahead launches wait at a gate the test opens once armed: a step is then running
    and the core is launching the one after it, before that step's tokens are back."""

    def __init__(self) -> None:
        super().__init__(step_delay_s=0.001)
        self.armed = False
        self.entered, self.proceed = threading.Event(), threading.Event()

    def launch(self, batch, feed=False):
        if feed and self.armed:
            self.armed = False
            self.entered.set()
            self.proceed.wait(10)
        return super().launch(batch, feed)


PROMPTS = [[5, 6, 7], [9, 10], [11] * 20, [12, 13, 14, 15], [16], [17, 18]]


def requests() -> list[Request]:
    """Requests ending by max_tokens (1, 2, 3 and more tokens) and by EOS (seeded)."""
    params = [
        SamplingParams(max_tokens=1, ignore_eos=True),
        SamplingParams(max_tokens=2, ignore_eos=True),
        SamplingParams(max_tokens=30, seed=27),  # EOS sampled at position 27: its 9th token
        SamplingParams(max_tokens=3, ignore_eos=True, seed=7),
        SamplingParams(max_tokens=40, temperature=0.0),
        SamplingParams(max_tokens=30, seed=12),  # EOS sampled at position 12: its 12th token
    ]
    return [Request(f"r{i}", p, sp) for i, (p, sp) in enumerate(zip(PROMPTS, params, strict=True))]


def run(runner: SyntheticModelRunner, lookahead: bool, reqs: list[Request], **kw) -> EngineCore:
    config = EngineConfig(
        runner="synthetic", max_num_seqs=kw.get("seqs", 8), num_kv_blocks=64, lookahead=lookahead
    )
    core = EngineCore(config, runner, kw.get("stream", lambda msg: None))
    threading.Thread(target=core.run_loop, daemon=True).start()
    for r in reqs:
        core.add_request(r)
    return core


def finished(reqs: list[Request], core: EngineCore) -> dict:
    wait_for(lambda: all(r.is_finished for r in reqs))
    wait_for(lambda: not core._step_in_flight)
    core.stop()
    return {r.request_id: (r.output_token_ids, r.finish_reason) for r in reqs}


def test_lookahead_gives_the_tokens_of_stepping_one_at_a_time() -> None:
    serial_reqs, ahead_reqs = requests(), requests()
    serial = run(EosRunner(step_delay_s=0.001), False, serial_reqs)
    want = finished(serial_reqs, serial)
    stream = Stream()
    ahead = run(EosRunner(step_delay_s=0.001), True, ahead_reqs, stream=stream)
    got = finished(ahead_reqs, ahead)
    assert got == want
    assert [len(want[f"r{i}"][0]) for i in range(6)] == [1, 2, 9, 3, 40, 12]
    assert ahead.counters.lookahead_steps > 0 and serial.counters.lookahead_steps == 0
    stream.check({r.request_id: r for r in ahead_reqs})  # each token once, one terminal
    assert ahead.blocks.num_used == 0  # look-ahead rows of finished requests freed too


def test_a_waiting_request_is_admitted_without_waiting_for_the_look_ahead() -> None:
    """Two seats, three requests: the third starts as soon as a seat frees, with the same
    tokens as one step at a time (a look-ahead never holds a seat a waiting one could use)."""
    serial_reqs, ahead_reqs = requests()[2:5], requests()[2:5]
    want = finished(serial_reqs, run(EosRunner(step_delay_s=0.001), False, serial_reqs, seqs=2))
    core = run(EosRunner(step_delay_s=0.001), True, ahead_reqs, seqs=2)
    assert finished(ahead_reqs, core) == want
    assert core.counters.lookahead_steps > 0 and core.blocks.num_used == 0


@pytest.mark.parametrize("how", ["abort", "pause-abort", "pause-keep"])
def test_ending_requests_with_a_look_ahead_step_in_flight(how: str) -> None:
    """An abort (by id, or a pause in abort mode) lands while a look-ahead step is being
    launched: every stream still ends with its tokens and exactly one abort, and the KV is
    freed. A keep-mode pause there keeps them; resumed, they finish with the tokens they
    would have had without the pause."""
    runner = GatedRunner()
    reqs = [Request(f"q{i}", [20 + i, 3], SamplingParams(max_tokens=60, seed=100 + i))
            for i in range(4)]  # fmt: skip
    stream = Stream()
    core = run(runner, True, reqs, stream=stream)
    wait_for(lambda: all(len(r.output_token_ids) >= 5 for r in reqs))
    runner.armed = True
    assert runner.entered.wait(10)
    if how == "abort":
        assert sorted(core.abort([r.request_id for r in reqs])[0]) == sorted(
            r.request_id for r in reqs
        )
        runner.proceed.set()
    else:
        threading.Timer(0.05, runner.proceed.set).start()  # the pause waits for the steps
        result = core.pause(timeout_s=10, mode=how.split("-")[1])
        assert not result["forced"]
    wait_for(lambda: not core._step_in_flight)
    if how == "pause-keep":
        assert result["kept"] == 4 and core.blocks.num_used > 0
        assert all(r.status is RequestStatus.RUNNING for r in reqs)
        core.resume()
        got = finished(reqs, core)
        again = [Request(r.request_id, r.prompt_token_ids, r.sampling) for r in reqs]
        assert got == finished(again, run(EosRunner(step_delay_s=0.001), False, again))
        assert all(len(r.output_token_ids) == 60 for r in reqs)
    else:
        wait_for(lambda: all(m and m[-1]["f"] for m in (stream.items[r.request_id] for r in reqs)))
        core.stop()
        assert set(stream.check({r.request_id: r for r in reqs}).values()) == {"abort"}
        assert core.blocks.num_used == 0


# ---------------------------------------------------------------- Scheduler.schedule_ahead
def scheduler(seats: int, blocks: int = 32) -> Scheduler:
    return Scheduler(BlockManager(blocks, 4), seats, 64, max_model_len=40)


def decode_step(s: Scheduler, reqs: list[Request]):
    """Admit `reqs`, run their prefill (one token sampled each), then schedule a decode step."""
    for r in reqs:
        s.add(r)
    s.commit(s.schedule(), {r.request_id: 1 for r in reqs})
    return s.schedule()


def test_schedule_ahead_feeds_each_request_its_next_token_in_order() -> None:
    s = scheduler(2)
    reqs = [Request(f"a{i}", [1, 2, 3], SamplingParams(max_tokens=5)) for i in range(2)]
    step = decode_step(s, reqs)
    ahead = s.schedule_ahead(step)
    assert ahead is not None
    assert [w.request_id for w in ahead.work] == [w.request_id for w in step.work]
    for w, now in zip(ahead.work, step.work, strict=True):
        assert w.token_ids == [FEED_TOKEN] and w.sample
        assert w.start_pos == now.start_pos + 1 == 4
        assert w.num_generated == now.num_generated + 1
        assert len(w.block_table) * 4 > w.start_pos  # its slot has a block (a new one here)
    s.commit(step, {"a0": 7, "a1": 8})
    s.commit(ahead, {"a0": 9, "a1": 10})
    assert [r.output_token_ids for r in reqs] == [[1, 7, 9], [1, 8, 10]]
    assert all(r.num_computed_tokens == 5 for r in reqs)


def test_schedule_ahead_declines_what_would_change_the_schedule() -> None:
    # a request whose next token is its last (max_tokens)
    s = scheduler(2)
    step = decode_step(s, [Request("x", [1, 2], SamplingParams(max_tokens=2))])
    assert s.schedule_ahead(step) is None
    # a waiting request and a free seat: the next step admits it instead
    s = scheduler(3)
    step = decode_step(
        s, [Request(f"y{i}", [1, 2], SamplingParams(max_tokens=9)) for i in range(2)]
    )
    s.add(Request("late", [4, 5], SamplingParams(max_tokens=9)))
    assert s.schedule_ahead(step) is None
    # ... but with every seat taken, the running ones go ahead
    s = scheduler(2)
    step = decode_step(
        s, [Request(f"z{i}", [1, 2], SamplingParams(max_tokens=9)) for i in range(2)]
    )
    s.add(Request("late", [4, 5], SamplingParams(max_tokens=9)))
    assert s.schedule_ahead(step) is not None
    # the context length, and no blocks left for the look-ahead token
    s = scheduler(1)
    step = decode_step(s, [Request("long", list(range(38)), SamplingParams(max_tokens=9))])
    assert s.schedule_ahead(step) is None
    s = scheduler(1, blocks=1)
    step = decode_step(s, [Request("tight", [1, 2, 3], SamplingParams(max_tokens=9))])
    assert step and s.schedule_ahead(step) is None
