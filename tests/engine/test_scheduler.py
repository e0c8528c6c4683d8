"""Continuous batching: budgets, chunked prefill, preemption by recompute."""

from __future__ import annotations

from engine_pod.engine.kv_cache import BlockManager
from engine_pod.engine.request import FinishReason, Request, RequestStatus
from engine_pod.engine.scheduler import Scheduler
from engine_pod.model.base import SamplingParams


def make(num_blocks=64, block_size=4, seqs=4, tokens=64) -> Scheduler:
    return Scheduler(BlockManager(num_blocks, block_size), seqs, tokens, 1024)


def add(s: Scheduler, rid: str, n: int) -> Request:
    r = Request(rid, list(range(1, n + 1)), SamplingParams(max_tokens=100))
    s.add(r)
    return r


def run_step(s: Scheduler):
    step = s.schedule()
    sampled = {w.request_id: 7 for w in step.work if w.sample}
    s.commit(step, sampled)
    return step


def test_max_num_seqs_bounds_running():
    s = make(seqs=3)
    for i in range(5):
        add(s, f"r{i}", 5)
    step = run_step(s)
    assert len(step.entries) == 3 and len(s.running) == 3 and len(s.waiting) == 2
    assert all(w.sample for w in step.work)  # whole prompts fit: each samples a token


def test_token_budget_chunks_long_prompts():
    s = make(tokens=8)
    r = add(s, "long", 20)
    chunks = []
    while not r.output_token_ids:
        step = run_step(s)
        chunks.append([(w.start_pos, len(w.token_ids), w.sample) for w in step.work])
    assert chunks == [[(0, 8, False)], [(8, 8, False)], [(16, 4, True)]]


def test_decode_and_prefill_mix_in_one_step():
    s = make(tokens=10)
    add(s, "a", 4)
    run_step(s)  # a prefilled
    add(s, "b", 30)
    step = run_step(s)
    kinds = {w.request_id: len(w.token_ids) for w in step.work}
    assert kinds == {"a": 1, "b": 9}


def test_preemption_frees_blocks_and_keeps_tokens():
    s = make(num_blocks=6, block_size=4, seqs=4, tokens=64)
    a = add(s, "a", 8)
    b = add(s, "b", 8)
    run_step(s)  # both prefilled: 2 blocks each + first token
    for _ in range(6):
        run_step(s)
    assert s.num_preemptions >= 1
    victim = b if b.num_preemptions else a
    assert victim.output_token_ids  # kept its tokens
    assert s.blocks.num_used <= 6


def test_finish_frees_and_removes():
    s = make()
    r = add(s, "a", 5)
    run_step(s)
    s.finish(r, FinishReason.ABORT)
    assert r.status is RequestStatus.FINISHED and r.finish_reason is FinishReason.ABORT
    assert s.blocks.num_used == 0 and not s.has_work


def test_commit_skips_requests_finished_during_the_step():
    s = make()
    r = add(s, "a", 5)
    step = s.schedule()
    s.finish(r, FinishReason.ABORT)
    assert s.commit(step, {"a": 3}) == []
    assert r.output_token_ids == []
