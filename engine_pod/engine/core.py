"""The engine core: the scheduling loop and the pause state machine.

    running ──pause(stage=reject)──▶ rejecting ──pause──▶ draining ──▶ paused
       ▲                                                              │
       └────────────────────────────── resume ◀───────────────────────┘

A full pause settles the requests in one of three modes: `abort` ends them all
(partial tokens, finish_reason "abort"), `retract` frees their KV and keeps them
waiting with their tokens (recomputed after resume), `keep` freezes them with
their KV. A weight update retracts whatever is kept: old-weights KV never meets
new weights. With `admission="queue"`, requests arriving while paused are held
(un-scheduled, not yet accepted) and start on resume.

Three threads share one lock (`self.cond`): the engine process's I/O thread
admits and aborts requests, the control thread runs pause / resume / weight
updates, and the loop thread runs steps. The model forward runs *outside* the
lock, so control never waits on the model except where the contract says so:
a pause waits for the in-flight step (with look-ahead decode steps, the one
launched behind it too; bounded by its timeout), then aborts every
request through the same output path as tokens, so a client always sees its
tokens followed by exactly one terminal message.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from engine_pod.config import EngineConfig
from engine_pod.engine.kv_cache import BlockManager
from engine_pod.engine.output import OutputProcessor, RequestOutput
from engine_pod.engine.request import FinishReason, Request
from engine_pod.engine.scheduler import ScheduledStep, Scheduler
from engine_pod.model.base import CheckpointError, ModelRunner
from engine_pod.model.digest import verify_checkpoint
from engine_pod.model.loader import recording_loads

log = logging.getLogger("rlfleet.engine")


class EngineState(str, enum.Enum):
    RUNNING = "running"
    REJECTING = "rejecting"  # admission closed, in-flight requests continue
    DRAINING = "draining"  # aborting everything, freeing KV
    PAUSED = "paused"


PAUSE_MODES = ("abort", "retract", "keep")
ADMISSIONS = ("reject", "queue")
RECENT_STEPS = 128


class Admission(str, enum.Enum):
    """What `add_request` did with a request."""

    ACCEPTED = "accepted"  # scheduled; "accepted" sent
    QUEUED = "queued"  # held while paused; "accepted" is sent on resume
    FULL = "full"  # the admission queue is full
    CLOSED = "closed"  # paused with admission "reject" (or stopping)


def accepted_message(req: Request) -> dict:
    return {"kind": "accepted", "id": req.request_id, "prompt_tokens": len(req.prompt_token_ids)}


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
    retracted: int = 0
    lookahead_steps: int = 0  # decode steps launched before the step before them was back


class EngineCore:
    """Owns scheduler, block manager and runner; every public method is thread-safe."""

    def __init__(
        self,
        config: EngineConfig,
        runner: ModelRunner,
        emit: Callable[[dict], None],
        flush: Callable[[float], bool] = lambda timeout: True,
        weights_version: str = "base",
        weights_digest: str = "",
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
        self.weights_digest = weights_digest
        self.blocks.hash_salt = f"{weights_version}:{weights_digest}"
        self.loading_weights = False
        self.pause_mode: str | None = "abort" if config.start_paused else None
        self.admission = "reject"  # of the current pause
        # Requests the current pause retracted (tokens kept, KV freed) / kept with their KV.
        self.paused_retracted = 0
        self.paused_kept = 0
        self.held: deque[Request] = deque()  # admission queue: arrived while paused
        self.counters = Counters()
        # The last steps as (step number, sequences, tokens, seconds in the forward): /v1/stats.
        self.recent_steps: deque[tuple[int, int, int, float]] = deque(maxlen=RECENT_STEPS)
        self._exec_lock = threading.Lock()  # one forward at a time; weight swaps wait for it
        # Requests whose last token's message (its text) is not out yet: made while the next
        # step runs on the device (`_emit_deferred`), before anything else is said about them.
        self._deferred: list[Request] = []
        self._step_in_flight = False
        self._epoch = 0  # bumped by a forced pause: a late step's results are dropped
        self._stopping = False
        self._step_delay_s = config.debug_step_delay_ms / 1000.0
        runner.allocate_kv_cache(config.num_kv_blocks, config.block_size)

    # -- messages out -------------------------------------------------------------
    def _emit_outputs(self, outs: list[RequestOutput]) -> None:
        if outs:
            self._emit({"kind": "out", "items": [o.to_wire() for o in outs]})

    def _emit_deferred(self) -> None:
        """Detokenize and send the tokens committed without their message (lock held). Every
        path that ends or moves a request calls this first, so its messages keep their order."""
        if self._deferred:
            outs = [self.outputs.render(r) for r in self._deferred]
            self._deferred.clear()
            self._emit_outputs(outs)

    def _set_state(self, state: EngineState) -> None:
        self.state = state
        self._emit(self.state_message())

    def state_message(self) -> dict:
        return {
            "kind": "state",
            "state": self.state.value,
            "weights_version": self.weights_version,
            "weights_digest": self.weights_digest,
            "weights_path": getattr(self.runner, "weights_path", None) or "",
            "loading": self.loading_weights,
            "mode": None if self.state is EngineState.RUNNING else self.pause_mode,
            "admission": None if self.state is EngineState.RUNNING else self.admission,
            "retracted": self.paused_retracted,
            "kept": self.paused_kept,
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

    def add_request(self, request: Request) -> Admission:
        """Schedule a request, or hold it while paused with queue admission; else refuse it."""
        with self.cond:
            if self._stopping:
                return Admission.CLOSED
            if self.state is EngineState.RUNNING:
                self._emit(accepted_message(request))  # before the loop can emit its tokens
                self.scheduler.add(request)
                self.counters.requests_accepted += 1
                self.cond.notify_all()
                return Admission.ACCEPTED
            if self.admission != "queue":
                return Admission.CLOSED
            if len(self.held) >= self.config.admission_queue_size:
                return Admission.FULL
            self.held.append(request)
            self.counters.requests_accepted += 1
            return Admission.QUEUED

    def abort(self, request_ids: list[str]) -> tuple[list[str], list[str]]:
        """Abort by id now; each ends with its partial tokens and finish_reason 'abort'."""
        aborted, not_found = [], []
        with self.cond:
            self._emit_deferred()
            outs = []
            held = {r.request_id: r for r in self.held}
            for rid in request_ids:
                req = self.scheduler.requests.get(rid)
                if req is None and rid in held:
                    req = held.pop(rid)
                    self.held.remove(req)
                    self._emit(accepted_message(req))  # its client waits for this first
                if req is None:
                    not_found.append(rid)
                    continue
                outs.append(self._abort_one(req))
                aborted.append(rid)
            self._emit_outputs(outs)
        return aborted, not_found

    def all_request_ids(self) -> list[str]:
        with self.cond:
            return list(self.scheduler.requests) + [r.request_id for r in self.held]

    def _abort_one(self, req: Request) -> RequestOutput:
        self.scheduler.finish(req, FinishReason.ABORT)
        self.counters.requests_aborted += 1
        self.counters.partial_tokens += len(req.output_token_ids)
        rest = req.text[req.text_sent :]  # text held back for a stop string that never came
        req.text_sent = len(req.text)
        return OutputProcessor.snapshot(req, [], rest)

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
                    self._emit_deferred()
                    self.cond.wait()
                if self._stopping:
                    return
                step = self.scheduler.schedule()
                if not step:
                    self._emit_deferred()
                    self.cond.wait(0.005)  # nothing fits right now; blocks free up as requests end
                    continue
                epoch = self._epoch
                self._step_in_flight = True
            self._run_steps(step, epoch)

    def _run_steps(self, step: ScheduledStep, epoch: int) -> None:
        """Run `step`; while it runs on the device, send the last step's messages and, where
        the scheduler and runner can (`Scheduler.schedule_ahead`, the runner's `launch(...,
        feed=True)`), launch the next decode step before this one's tokens are back, and so
        on: the host's commit, scheduling and packing then overlap the device's work."""
        launch = getattr(self.runner, "launch", None)
        error: Exception | None = None
        wait: Callable[[], dict[str, int]] | None = None
        t0 = time.perf_counter()
        with self._exec_lock:
            try:
                wait = launch(step.work) if launch is not None else None
            except Exception as e:  # a failed step must not leave requests hanging
                error = e
            while True:
                with self.cond:  # the last step's messages: while this one runs, if it can
                    self._emit_deferred()
                ahead, ahead_wait = None, None
                if error is None and wait is not None and launch is not None:
                    ahead, ahead_wait = self._launch_ahead(step, epoch, launch)
                sampled: dict[str, int] | None = None
                if error is None:
                    try:
                        sampled = wait() if wait is not None else self.runner.execute(step.work)
                        if self._step_delay_s:
                            time.sleep(self._step_delay_s)
                    except Exception as e:
                        error = e
                if error is not None:
                    log.exception("step failed; aborting its %d requests", len(step.entries),
                                  exc_info=error)  # fmt: skip
                t1 = time.perf_counter()
                with self.cond:
                    if ahead is None:
                        self._step_in_flight = False
                    if epoch == self._epoch:
                        self._finish_step(step, sampled, error, t1 - t0)
                    self.cond.notify_all()
                if ahead is None:
                    return
                # the look-ahead step is this step now (its requests that just ended, by a
                # failure too, are skipped at its commit)
                step, wait, error, t0 = ahead, ahead_wait, None, t1

    def _launch_ahead(
        self, step: ScheduledStep, epoch: int, launch: Callable
    ) -> tuple[ScheduledStep | None, Callable[[], dict[str, int]] | None]:
        """Schedule and launch the decode step after `step` (still running), if look-ahead
        is on, the engine runs, and the scheduler and runner can; else (None, None)."""
        with self.cond:
            if (
                not self.config.lookahead
                or epoch != self._epoch
                or self._stopping
                or self.state not in (EngineState.RUNNING, EngineState.REJECTING)
            ):
                return None, None
            ahead = self.scheduler.schedule_ahead(step)
        if ahead is None:
            return None, None
        try:
            ahead_wait = launch(ahead.work, feed=True)
        except Exception:
            log.exception("look-ahead launch failed; stepping without it")
            return None, None
        if ahead_wait is None:
            return None, None
        self.counters.lookahead_steps += 1
        return ahead, ahead_wait

    def _finish_step(
        self,
        step: ScheduledStep,
        sampled: dict[str, int] | None,
        error: Exception | None,
        seconds: float = 0.0,
    ) -> None:
        self._emit_deferred()
        self.counters.steps += 1
        self.recent_steps.append((self.counters.steps, len(step.entries), step.num_tokens, seconds))
        outs: list[RequestOutput] = []
        if error is not None or sampled is None:
            self.counters.step_errors += 1
            for req, _ in step.entries:
                if not req.is_finished and req.request_id in self.scheduler.requests:
                    outs.append(self._abort_one(req))
        else:
            for req in self.scheduler.commit(step, sampled):
                self.counters.tokens_generated += 1
                if req.sampling.stop:  # the finish needs the text: its message now
                    outs.append(self.outputs.process_token(req))
                else:  # finish rules without text now; the text while the next step runs
                    reason = self.outputs.finish_reason(req)
                    if reason is not None:
                        req.finish(reason)
                    self._deferred.append(req)
                if req.is_finished:
                    self.scheduler.finish(req, req.finish_reason or FinishReason.STOP)
                    self.counters.requests_finished += 1
        self._emit_outputs(outs)

    def stop(self) -> None:
        with self.cond:
            self._emit_deferred()
            self._stopping = True
            self.cond.notify_all()

    # -- control (control thread) -----------------------------------------------------
    def pause(
        self,
        timeout_s: float | None = None,
        stage: str | None = None,
        mode: str = "abort",
        admission: str = "reject",
    ) -> dict:
        """Close admission; a full pause also settles every request by `mode` and stops the loop."""
        if mode not in PAUSE_MODES:
            raise ControlError(400, f"mode must be one of {', '.join(PAUSE_MODES)}")
        if admission not in ADMISSIONS:
            raise ControlError(400, f"admission must be one of {', '.join(ADMISSIONS)}")
        t0 = time.monotonic()
        timeout = self.config.pause_timeout_s if timeout_s is None else timeout_s
        deadline = t0 + timeout
        with self.cond:
            if self.state is EngineState.PAUSED:
                if admission != self.admission:  # a replica started paused joins a pause
                    self.admission = admission
                    self._emit(self.state_message())
                return self._pause_result(t0, already=True)
            self.pause_mode, self.admission = mode, admission
            self._set_state(EngineState.REJECTING)
            log.info("pause (mode %s, admission %s): admission closed", mode, admission)
            if stage == "reject":
                return {
                    "paused": False,
                    "state": self.state.value,
                    "stage": "reject",
                    "mode": mode,
                    "admission": admission,
                    "total_blocks": self.blocks.num_blocks,
                    "duration_s": time.monotonic() - t0,
                }
            self._set_state(EngineState.DRAINING)
            t_reject = time.monotonic()
            forced = self._wait_for_step(deadline, timeout)
            self._emit_deferred()
            t_step = time.monotonic()
            used_before = self.blocks.num_used
            settle = {
                "abort": self._settle_abort,
                "retract": self._settle_retract,
                "keep": self._settle_keep,
            }[mode]
            figures = settle()
            forced = bool(figures.pop("leaked", 0)) or forced
            freed = used_before - self.blocks.num_used
            t_settle = time.monotonic()
            self.paused_retracted = figures.get("retracted", 0)
            self.paused_kept = figures.get("kept", 0)
            self._set_state(EngineState.PAUSED)
        flushed = self._flush_wait(max(0.05, deadline - time.monotonic()))
        result = self._pause_result(t0, already=False)
        result.update(
            figures,
            freed_blocks=freed,
            forced=forced or not flushed,
            phases={
                "reject_s": t_reject - t0,
                "wait_step_s": t_step - t_reject,
                "settle_s": t_settle - t_step,
                "flush_s": time.monotonic() - t_settle,
            },
        )
        log.info(
            "pause (%s): done in %.3fs, aborted %d, retracted %d, kept %d (%d partial tokens), "
            "freed %d/%d blocks%s",
            mode,
            result["duration_s"],
            result["aborted"],
            result["retracted"],
            result["kept"],
            result["partial_tokens"],
            freed,
            result["total_blocks"],
            " (forced)" if result["forced"] else "",
        )
        return result

    def _wait_for_step(self, deadline: float, timeout: float) -> bool:
        """Wait (lock released) for the in-flight step; past the deadline, drop its results.

        True if forced."""
        while self._step_in_flight and (left := deadline - time.monotonic()) > 0:
            self.cond.wait(left)
        if not self._step_in_flight:
            return False
        self._epoch += 1  # the step still running will be discarded
        log.warning("pause: in-flight step outlived timeout_s=%.3f; forcing", timeout)
        return True

    def _parked_tokens(self) -> int:
        return sum(len(r.output_token_ids) for r in self.scheduler.requests.values())

    def _settle_abort(self) -> dict:
        """End every request with its partial tokens; empty the scheduler and the cache."""
        partial = self._parked_tokens()
        reqs = list(self.scheduler.running) + list(self.scheduler.waiting)
        self._emit_outputs([self._abort_one(r) for r in reqs])
        leaked = self._leaked_blocks()
        self.blocks.reset()
        self.scheduler.reset()
        return {"aborted": len(reqs), "partial_tokens": partial, "leaked": leaked}

    def _settle_retract(self) -> dict:
        """Free every request's KV; all wait, tokens kept, to be recomputed after resume."""
        retracted = self.scheduler.retract_all()
        self.counters.retracted += len(retracted)
        leaked = self._leaked_blocks()
        if leaked:
            self.blocks.reset()
        return {
            "retracted": len(retracted),
            "waiting": len(self.scheduler.waiting),
            "partial_tokens": self._parked_tokens(),
            "leaked": leaked,
        }

    def _settle_keep(self) -> dict:
        """Leave every request where it is, KV included."""
        return {
            "kept": len(self.scheduler.running),
            "waiting": len(self.scheduler.waiting),
            "partial_tokens": self._parked_tokens(),
        }

    def _leaked_blocks(self) -> int:
        """Blocks still in use although no request may hold any now (logged)."""
        n = self.blocks.num_used
        if n:
            log.error("pause: %d blocks still used with no request holding them; force-freeing", n)
        return n

    def _pause_result(self, t0: float, already: bool) -> dict:
        return {
            "paused": True,
            "already_paused": already,
            "state": self.state.value,
            "mode": self.pause_mode,
            "admission": self.admission,
            "aborted": 0,
            "retracted": 0,
            "kept": 0,
            "waiting": len(self.scheduler.waiting),
            "held": len(self.held),
            "partial_tokens": 0,
            "freed_blocks": 0,
            "total_blocks": self.blocks.num_blocks,
            "used_blocks": self.blocks.num_used,
            "duration_s": time.monotonic() - t0,
            "forced": False,
            "weights_version": self.weights_version,
            "weights_digest": self.weights_digest,
        }

    def resume(self) -> dict:
        """Start held requests, reopen admission and restart the loop."""
        with self.cond:
            if self.state is EngineState.RUNNING:
                return {"resumed": False, "already_running": True, "state": self.state.value}
            mode = self.pause_mode
            continued = len(self.scheduler.requests)
            admitted = self._admit_held()
            self.pause_mode, self.admission = None, "reject"
            self.paused_retracted = self.paused_kept = 0
            self._set_state(EngineState.RUNNING)
            self.cond.notify_all()
        log.info(
            "resumed from %s pause (weights %s): %d requests continue, %d held ones start",
            mode,
            self.weights_version,
            continued,
            admitted,
        )
        return {
            "resumed": True,
            "already_running": False,
            "state": "running",
            "mode": mode,
            "continued": continued,
            "admitted": admitted,
            "weights_version": self.weights_version,
        }

    def _admit_held(self) -> int:
        """Move the admission queue into the scheduler, answering each one 'accepted'."""
        n = len(self.held)
        for req in self.held:
            self._emit(accepted_message(req))
            self.scheduler.add(req)
        self.held.clear()
        return n

    def update_weights(self, path: str, version: str, digest: str | None = None) -> dict:
        """Load (hashing the bytes as they are read), verify and swap a checkpoint; only
        while paused. A bad one changes nothing: every check ends before the swap.

        Requests kept with their KV are retracted: they recompute under the new weights.
        The answer's `phases` says where the time went (`hash_s` overlaps `read_s`).
        """
        t0 = time.monotonic()
        with self.cond:
            if self.state is not EngineState.PAUSED:
                raise ControlError(
                    409, f"update_weights needs a paused engine; state is {self.state.value}"
                )
            self.loading_weights = True
            self._emit(self.state_message())
        phases: dict[str, float] = {}
        try:
            try:
                # One pass over the bytes: the loader hashes what it reads (on a second
                # thread), and the digest is made from those hashes, before anything swaps.
                t = time.monotonic()
                with recording_loads() as loaded:
                    prepared = self.runner.prepare_weights(path)
                phases["read_s"] = loaded.read_s
                phases["hash_s"] = loaded.hash_s  # on the second thread, within read_s
                phases["build_s"] = time.monotonic() - t - loaded.read_s
                t = time.monotonic()
                new_digest = verify_checkpoint(path, digest, known=loaded.file_sha256)
                phases["verify_s"] = time.monotonic() - t
            except CheckpointError as e:
                raise ControlError(400, f"checkpoint rejected, old weights kept: {e}") from e
            except OSError as e:
                raise ControlError(400, f"checkpoint unreadable, old weights kept: {e}") from e
            load_s = time.monotonic() - t0
            t = time.monotonic()
            with self._exec_lock, self.cond:
                self.runner.swap_weights(prepared)
                retracted = self._drop_stale_kv()
                self.weights_version, self.weights_digest = version, new_digest
                self.blocks.hash_salt = f"{version}:{new_digest}"
            phases["swap_s"] = time.monotonic() - t
        finally:
            with self.cond:
                self.loading_weights = False
                self._emit(self.state_message())
        duration_s = time.monotonic() - t0
        log.info(
            "weights updated to %s from %s in %.3fs (%s)",
            version,
            path,
            duration_s,
            ", ".join(f"{k} {v:.3f}" for k, v in phases.items()),
        )
        return {
            "updated": True,
            "weights_version": version,
            "weights_digest": new_digest,
            "path": path,
            "mode": self.pause_mode,
            "retracted": retracted,
            "load_s": load_s,
            "duration_s": duration_s,
            "phases": phases,
        }

    def _drop_stale_kv(self) -> int:
        """Old-weights KV is stale: retract every request holding some, then empty the cache."""
        retracted = self.scheduler.retract_all()
        self.counters.retracted += len(retracted)
        self.paused_retracted += len(retracted)
        self.paused_kept = 0
        if retracted and self.pause_mode == "keep":
            self.pause_mode = "retract"
            log.info(
                "update_weights: %d kept requests retracted (recomputed on resume)", len(retracted)
            )
        self.blocks.reset()  # nothing from the old weights is reused
        return len(retracted)

    def stats(self) -> dict:
        with self.cond:
            kv = self.blocks.stats()
            c = self.counters
            return {
                "state": self.state.value,
                "pause_mode": self.pause_mode,
                "admission": self.admission,
                "weights_version": self.weights_version,
                "weights_digest": self.weights_digest,
                "loading": self.loading_weights,
                "running": len(self.scheduler.running),
                "waiting": len(self.scheduler.waiting),
                "held": len(self.held),
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
                "requests_retracted": c.retracted,
                "lookahead_steps": c.lookahead_steps,
                "recent_steps": [list(x) for x in self.recent_steps],
            }
