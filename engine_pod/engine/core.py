"""The engine core: the scheduling loop and the pause state machine.

    running ──pause(stage=reject)──▶ rejecting ──pause──▶ draining ──▶ paused
       ▲                                                              │
       └────────────────────────────── resume ◀───────────────────────┘

Three threads share one lock (`self.cond`): the engine process's I/O thread
admits and aborts requests, the control thread runs pause / resume / weight
updates, and the loop thread runs steps. The model forward runs *outside* the
lock, so control never waits on the model except where the contract says so:
a pause waits for the in-flight step (bounded by its timeout), then aborts every
request through the same output path as tokens, so a client always sees its
tokens followed by exactly one terminal message.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from engine_pod.config import EngineConfig
from engine_pod.engine.kv_cache import BlockManager
from engine_pod.engine.output import OutputProcessor, RequestOutput
from engine_pod.engine.request import FinishReason, Request
from engine_pod.engine.scheduler import ScheduledStep, Scheduler
from engine_pod.model.base import CheckpointError, ModelRunner

log = logging.getLogger("rlfleet.engine")


class EngineState(str, enum.Enum):
    RUNNING = "running"
    REJECTING = "rejecting"  # admission closed, in-flight requests continue
    DRAINING = "draining"  # aborting everything, freeing KV
    PAUSED = "paused"


class ControlError(Exception):
    """A control call refused with an HTTP status (409 wrong state, 400 bad input)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Counters:
    requests_accepted: int = 0
    steps: int = 0
    tokens_generated: int = 0
    requests_finished: int = 0
    requests_aborted: int = 0
    partial_tokens: int = 0
    step_errors: int = 0


class EngineCore:
    """Owns scheduler, block manager and runner; every public method is thread-safe."""

    def __init__(
        self,
        config: EngineConfig,
        runner: ModelRunner,
        emit: Callable[[dict], None],
        flush: Callable[[float], bool] = lambda timeout: True,
        weights_version: str = "base",
    ) -> None:
        self.config = config
        self.runner = runner
        self._emit = emit  # queue a message to the API server
        self._flush_wait = flush  # wait until every queued message was sent; False on timeout
        self.cond = threading.Condition(threading.RLock())
        self.state = EngineState.PAUSED if config.start_paused else EngineState.RUNNING
        max_len = min(config.max_model_len, runner.info.max_model_len)
        self.max_model_len = max_len
        self.blocks = BlockManager(
            config.num_kv_blocks, config.block_size, config.enable_prefix_cache
        )
        self.scheduler = Scheduler(
            self.blocks, config.max_num_seqs, config.max_num_batched_tokens, max_len
        )
        self.outputs = OutputProcessor(runner.tokenizer, max_len)
        self.weights_version = weights_version
        self.blocks.hash_salt = weights_version
        self.loading_weights = False
        self.counters = Counters()
        self._exec_lock = threading.Lock()  # one forward at a time; weight swaps wait for it
        self._step_in_flight = False
        self._epoch = 0  # bumped by a forced pause: a late step's results are dropped
        self._stopping = False
        self._step_delay_s = config.debug_step_delay_ms / 1000.0
        runner.allocate_kv_cache(config.num_kv_blocks, config.block_size)

    # -- messages out -------------------------------------------------------------
    def _emit_outputs(self, outs: list[RequestOutput]) -> None:
        if outs:
            self._emit({"kind": "out", "items": [o.to_wire() for o in outs]})

    def _set_state(self, state: EngineState) -> None:
        self.state = state
        self._emit(self.state_message())

    def state_message(self) -> dict:
        return {
            "kind": "state",
            "state": self.state.value,
            "weights_version": self.weights_version,
            "loading": self.loading_weights,
        }

    # -- admission and abort (I/O thread) -------------------------------------------
    def validate(self, prompt_ids: list[int], max_tokens: int) -> str | None:
        """Why a request can never run here, or None."""
        if not prompt_ids:
            return "prompt is empty"
        if max_tokens < 1:
            return "max_tokens must be >= 1"
        total = len(prompt_ids) + max_tokens
        if total > self.max_model_len:
            return (
                f"prompt ({len(prompt_ids)} tokens) + max_tokens ({max_tokens}) = {total} "
                f"exceeds the context length {self.max_model_len}"
            )
        if -(-total // self.blocks.block_size) > self.blocks.num_blocks:
            return f"request needs {total} tokens of KV cache; the cache holds {self.blocks.num_blocks * self.blocks.block_size}"
        vocab = self.runner.info.vocab_size
        if any(t < 0 or t >= vocab for t in prompt_ids):
            return f"prompt token ids must be in [0, {vocab})"
        return None

    def add_request(self, request: Request) -> bool:
        """Admit a request; False if admission is closed (the caller answers 503)."""
        with self.cond:
            if self.state is not EngineState.RUNNING or self._stopping:
                return False
            self.scheduler.add(request)
            self.counters.requests_accepted += 1
            self.cond.notify_all()
            return True

    def abort(self, request_ids: list[str]) -> tuple[list[str], list[str]]:
        """Abort by id now; each ends with its partial tokens and finish_reason 'abort'."""
        aborted, not_found = [], []
        with self.cond:
            outs = []
            for rid in request_ids:
                req = self.scheduler.requests.get(rid)
                if req is None:
                    not_found.append(rid)
                    continue
                outs.append(self._abort_one(req))
                aborted.append(rid)
            self._emit_outputs(outs)
        return aborted, not_found

    def all_request_ids(self) -> list[str]:
        with self.cond:
            return list(self.scheduler.requests)

    def _abort_one(self, req: Request) -> RequestOutput:
        self.scheduler.finish(req, FinishReason.ABORT)
        self.counters.requests_aborted += 1
        self.counters.partial_tokens += len(req.output_token_ids)
        return OutputProcessor.snapshot(req, [], "")

    # -- the loop (loop thread) ---------------------------------------------------
    def _runnable(self) -> bool:
        return (
            self.state in (EngineState.RUNNING, EngineState.REJECTING) and self.scheduler.has_work
        )

    def run_loop(self) -> None:
        log.info("engine loop started (state=%s)", self.state.value)
        while True:
            with self.cond:
                while not self._stopping and not self._runnable():
                    self.cond.wait()
                if self._stopping:
                    return
                step = self.scheduler.schedule()
                if not step:
                    self.cond.wait(0.005)  # nothing fits right now; blocks free up as requests end
                    continue
                epoch = self._epoch
                self._step_in_flight = True
            sampled: dict[str, int] | None = None
            error: Exception | None = None
            try:
                with self._exec_lock:
                    sampled = self.runner.execute(step.work)
                    if self._step_delay_s:
                        time.sleep(self._step_delay_s)
            except Exception as e:  # a failed step must not leave requests hanging
                error = e
                log.exception("step failed; aborting its %d requests", len(step.entries))
            with self.cond:
                self._step_in_flight = False
                if epoch == self._epoch:
                    self._finish_step(step, sampled, error)
                self.cond.notify_all()

    def _finish_step(
        self, step: ScheduledStep, sampled: dict[str, int] | None, error: Exception | None
    ) -> None:
        self.counters.steps += 1
        outs: list[RequestOutput] = []
        if error is not None or sampled is None:
            self.counters.step_errors += 1
            for req, _ in step.entries:
                if not req.is_finished and req.request_id in self.scheduler.requests:
                    outs.append(self._abort_one(req))
        else:
            for req in self.scheduler.commit(step, sampled):
                out = self.outputs.process_token(req)
                self.counters.tokens_generated += 1
                if req.is_finished:
                    self.scheduler.finish(req, req.finish_reason or FinishReason.STOP)
                    self.counters.requests_finished += 1
                outs.append(out)
        self._emit_outputs(outs)

    def stop(self) -> None:
        with self.cond:
            self._stopping = True
            self.cond.notify_all()

    # -- control (control thread) -----------------------------------------------------
    def pause(self, timeout_s: float | None = None, stage: str | None = None) -> dict:
        """Close admission; with the full pause, abort everything, free the cache and stop the loop."""
        t0 = time.monotonic()
        timeout = self.config.pause_timeout_s if timeout_s is None else timeout_s
        with self.cond:
            total = self.blocks.num_blocks
            if self.state is EngineState.PAUSED:
                return self._pause_result(t0, already=True)
            if self.state is EngineState.RUNNING:
                self._set_state(EngineState.REJECTING)
                log.info("pause: admission closed")
            if stage == "reject":
                return {
                    "paused": False,
                    "state": self.state.value,
                    "stage": "reject",
                    "total_blocks": total,
                    "duration_s": time.monotonic() - t0,
                }
            self._set_state(EngineState.DRAINING)
            t_reject = time.monotonic()
            deadline = t0 + timeout
            while self._step_in_flight and (left := deadline - time.monotonic()) > 0:
                self.cond.wait(left)
            forced = self._step_in_flight
            if forced:
                self._epoch += 1  # the step still running will be discarded
                log.warning("pause: in-flight step outlived timeout_s=%.3f; forcing", timeout)
            t_step = time.monotonic()
            used_before = self.blocks.num_used
            reqs = list(self.scheduler.running) + list(self.scheduler.waiting)
            partial = sum(len(r.output_token_ids) for r in reqs)
            self._emit_outputs([self._abort_one(r) for r in reqs])
            leaked = self.blocks.num_used
            if leaked:
                log.error(
                    "pause: %d blocks still used after aborting all requests; force-freeing", leaked
                )
                forced = True
            t_abort = time.monotonic()
            self.blocks.reset()
            self.scheduler.reset()
            self._set_state(EngineState.PAUSED)
            t_reset = time.monotonic()
        flushed = self._flush_wait(max(0.05, deadline - time.monotonic()))
        result = self._pause_result(t0, already=False)
        result.update(
            aborted=len(reqs),
            partial_tokens=partial,
            freed_blocks=used_before,
            forced=forced or not flushed,
            phases={
                "reject_s": t_reject - t0,
                "wait_step_s": t_step - t_reject,
                "abort_s": t_abort - t_step,
                "reset_s": t_reset - t_abort,
                "flush_s": time.monotonic() - t_reset,
            },
        )
        log.info(
            "pause: done in %.3fs, aborted %d requests (%d partial tokens), freed %d/%d blocks%s",
            result["duration_s"],
            len(reqs),
            partial,
            used_before,
            total,
            " (forced)" if result["forced"] else "",
        )
        return result

    def _pause_result(self, t0: float, already: bool) -> dict:
        return {
            "paused": True,
            "already_paused": already,
            "state": self.state.value,
            "aborted": 0,
            "partial_tokens": 0,
            "freed_blocks": 0,
            "total_blocks": self.blocks.num_blocks,
            "used_blocks": self.blocks.num_used,
            "duration_s": time.monotonic() - t0,
            "forced": False,
            "weights_version": self.weights_version,
        }

    def resume(self) -> dict:
        with self.cond:
            if self.state is EngineState.RUNNING:
                return {"resumed": False, "already_running": True, "state": self.state.value}
            self._set_state(EngineState.RUNNING)
            self.cond.notify_all()
        log.info("resumed (weights %s)", self.weights_version)
        return {
            "resumed": True,
            "already_running": False,
            "state": "running",
            "weights_version": self.weights_version,
        }

    def update_weights(self, path: str, version: str) -> dict:
        """Load, validate and swap a checkpoint; only while paused. A bad one changes nothing."""
        t0 = time.monotonic()
        with self.cond:
            if self.state is not EngineState.PAUSED:
                raise ControlError(
                    409, f"update_weights needs a paused engine; state is {self.state.value}"
                )
            self.loading_weights = True
            self._emit(self.state_message())
        try:
            try:
                prepared = self.runner.prepare_weights(path)
            except CheckpointError as e:
                raise ControlError(400, f"checkpoint rejected, old weights kept: {e}") from e
            except OSError as e:
                raise ControlError(400, f"checkpoint unreadable, old weights kept: {e}") from e
            load_s = time.monotonic() - t0
            with self._exec_lock, self.cond:
                self.runner.swap_weights(prepared)
                self.weights_version = version
                self.blocks.hash_salt = version
                self.blocks.reset()  # nothing from the old weights is reused
        finally:
            with self.cond:
                self.loading_weights = False
                self._emit(self.state_message())
        log.info("weights updated to %s from %s in %.3fs", version, path, time.monotonic() - t0)
        return {
            "updated": True,
            "weights_version": version,
            "path": path,
            "load_s": load_s,
            "duration_s": time.monotonic() - t0,
        }

    def stats(self) -> dict:
        with self.cond:
            kv = self.blocks.stats()
            c = self.counters
            return {
                "state": self.state.value,
                "weights_version": self.weights_version,
                "loading": self.loading_weights,
                "running": len(self.scheduler.running),
                "waiting": len(self.scheduler.waiting),
                "kv_total_blocks": kv.total_blocks,
                "kv_used_blocks": kv.used_blocks,
                "kv_cached_blocks": kv.cached_blocks,
                "prefix_hit_tokens": self.blocks.prefix_hits,
                "preemptions": self.scheduler.num_preemptions,
                "steps": c.steps,
                "requests_accepted": c.requests_accepted,
                "tokens_generated": c.tokens_generated,
                "requests_finished": c.requests_finished,
                "requests_aborted": c.requests_aborted,
                "partial_tokens": c.partial_tokens,
                "step_errors": c.step_errors,
            }
