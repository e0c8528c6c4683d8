"""Continuous batching: waiting and running queues, chunked prefill, preemption by recompute.

Each `schedule()` builds one step under two budgets: at most `max_num_seqs`
running sequences and at most `max_num_batched_tokens` tokens. Running
sequences go first (a decode token each, or the next chunk of a long prompt);
then waiting ones are admitted while blocks and budget last. When a running
sequence cannot get a block, the newest running sequence is preempted: its KV is
freed and it goes back to the front of the waiting queue with every token kept,
to be recomputed later.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from engine_pod.engine.kv_cache import BlockManager
from engine_pod.engine.request import FinishReason, Request, RequestStatus
from engine_pod.model.base import FEED_TOKEN, SeqWork


@dataclass
class ScheduledStep:
    """What one step computes: (request, number of tokens) pairs and the runner's view of them."""

    entries: list[tuple[Request, int]] = field(default_factory=list)
    work: list[SeqWork] = field(default_factory=list)
    preempted: list[str] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.entries)

    def __bool__(self) -> bool:
        return bool(self.entries)


class Scheduler:
    """Owns the queues; the block manager owns the KV blocks."""

    def __init__(
        self,
        blocks: BlockManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_model_len: int,
    ) -> None:
        self.blocks = blocks
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.num_preemptions = 0

    # -- queues -------------------------------------------------------------------
    def add(self, request: Request) -> None:
        self.requests[request.request_id] = request
        self.waiting.append(request)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def finish(self, request: Request, reason: FinishReason) -> None:
        """Finish a request now: off the queues, blocks freed."""
        request.finish(reason)
        self.requests.pop(request.request_id, None)
        if request in self.running:
            self.running.remove(request)
        else:
            try:
                self.waiting.remove(request)
            except ValueError:
                pass
        self.blocks.free(request.request_id)

    def reset(self) -> None:
        """Drop every queue entry (callers finish the requests first)."""
        self.waiting.clear()
        self.running.clear()
        self.requests.clear()

    def retract_all(self) -> list[Request]:
        """Free every request's KV, tokens kept; running ones go back to the front of the
        waiting queue in their order. Returns the requests that held KV (recomputed later)."""
        held = [r for r in self.waiting if r.request_id in self.blocks.tables]
        for req in held:
            self._release(req)
        moved = list(self.running)
        for req in reversed(moved):
            self._release(req)
            self.waiting.appendleft(req)
        self.running.clear()
        return moved + held

    # -- scheduling ---------------------------------------------------------------
    def _release(self, req: Request) -> None:
        """Free a request's KV; it keeps every token and will recompute them."""
        self.blocks.free(req.request_id)
        req.status = RequestStatus.PREEMPTED
        req.num_computed_tokens = 0
        req.num_cached_tokens = 0

    def _preempt(self, victim: Request) -> None:
        self.running.remove(victim)
        self._release(victim)
        victim.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(victim)

    def schedule(self) -> ScheduledStep:
        step = ScheduledStep()
        budget = self.max_num_batched_tokens

        # 1. Running sequences: a decode token, or the next prefill chunk.
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(req.num_tokens - req.num_computed_tokens, budget)
            while not self.blocks.allocate(req, n):
                victim = self.running[-1]
                self._preempt(victim)
                step.preempted.append(victim.request_id)
                if victim is req:
                    break
            else:
                step.entries.append((req, n))
                budget -= n
                i += 1
                continue
            # `req` itself was preempted: the list shifted, do not advance.
        # 2. Waiting sequences, oldest first, while seats, budget and blocks last.
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            req = self.waiting[0]
            if req.num_computed_tokens == 0:
                req.num_cached_tokens = self.blocks.take_cached_prefix(req)
                req.num_computed_tokens = req.num_cached_tokens
            n = min(req.num_tokens - req.num_computed_tokens, budget)
            if not self.blocks.allocate(req, n):
                break  # keeps any prefix blocks it took; it stays first in line
            self.waiting.popleft()
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            step.entries.append((req, n))
            budget -= n

        for req, n in step.entries:
            start = req.num_computed_tokens
            step.work.append(
                SeqWork(
                    request_id=req.request_id,
                    token_ids=req.token_slice(start, n),
                    start_pos=start,
                    block_table=list(self.blocks.tables[req.request_id]),
                    sample=start + n == req.num_tokens,
                    sampling=req.sampling,
                    num_generated=len(req.output_token_ids),
                )
            )
        return step

    def schedule_ahead(self, step: ScheduledStep) -> ScheduledStep | None:
        """The decode step after `step`, scheduled while `step` still runs (look-ahead, as
        vLLM's async scheduling and SGLang's overlap scheduler): the same requests in the
        same order, one token each, whose input is the token `step` samples (FEED_TOKEN).

        None unless every running request is in `step` as one decode token, none can finish
        by length with that token, no waiting request could take a seat now (a look-ahead
        never delays an admission or preempts) and the blocks are there. A request that
        finishes on `step`'s token (EOS, a stop string, an abort) wastes its look-ahead
        row: `commit` skips it and its blocks were freed with it.
        """
        if not step.entries or len(step.entries) != len(self.running):
            return None
        if self.waiting and len(self.running) < self.max_num_seqs:
            return None
        for (req, n), w in zip(step.entries, step.work, strict=True):
            if n != 1 or not w.sample or req.status is not RequestStatus.RUNNING:
                return None
            if (
                len(req.output_token_ids) + 1 >= req.sampling.max_tokens
                or req.num_tokens + 1 >= self.max_model_len
            ):
                return None  # finishes by length with `step`'s token
        for req, _ in step.entries:  # `step`'s token and the look-ahead's
            if not self.blocks.allocate(req, 2):
                return None  # blocks taken so far are the next steps' anyway
        ahead = ScheduledStep(entries=[(req, 1) for req, _ in step.entries])
        for req, _ in step.entries:
            ahead.work.append(
                SeqWork(
                    request_id=req.request_id,
                    token_ids=[FEED_TOKEN],
                    start_pos=req.num_computed_tokens + 1,
                    block_table=list(self.blocks.tables[req.request_id]),
                    sample=True,
                    sampling=req.sampling,
                    num_generated=len(req.output_token_ids) + 1,
                )
            )
        return ahead

    def commit(self, step: ScheduledStep, sampled: dict[str, int]) -> list[Request]:
        """Apply a finished step: advance progress, append sampled tokens. Returns requests that got a token.

        Requests finished (aborted) while the step ran are skipped.
        """
        advanced: list[Request] = []
        for req, n in step.entries:
            if req.is_finished or req.request_id not in self.requests:
                continue
            req.num_computed_tokens += n
            self.blocks.register_full_blocks(req)
            token = sampled.get(req.request_id)
            if token is not None:
                req.output_token_ids.append(token)
                advanced.append(req)
        return advanced
