"""The engine process: its ZMQ sockets and three threads (I/O, control, loop) around one EngineCore."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from typing import Any

import zmq

from engine_pod.config import EngineConfig
from engine_pod.engine.core import Admission, ControlError, EngineCore
from engine_pod.engine.request import Request
from engine_pod.ipc import IMMEDIATE_COMMANDS, IpcAddresses
from engine_pod.model.base import ModelRunner, SamplingParams
from engine_pod.model.digest import verify_checkpoint
from engine_pod.model.loader import recording_loads

log = logging.getLogger("rlfleet.engine")


class OutputSender:
    """Queues messages from any thread; one thread owns the PUSH socket and sends them in order."""

    def __init__(self, socket: zmq.Socket) -> None:
        self._socket = socket
        self._queue: queue.Queue[dict | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="output-sender", daemon=True)
        self._thread.start()

    def put(self, message: dict) -> None:
        self._queue.put(message)

    def _run(self) -> None:
        while True:
            msg = self._queue.get()
            try:
                if msg is None:
                    return
                self._socket.send_json(msg)
            finally:
                self._queue.task_done()

    def flush(self, timeout: float) -> bool:
        """Wait until every queued message has been handed to ZMQ; False on timeout."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.0005)
        return True

    def close(self, timeout: float = 2.0) -> None:
        self.flush(timeout)
        self._queue.put(None)
        self._thread.join(timeout)


def build_runner(config: EngineConfig) -> ModelRunner:
    """The model runner named by the config (Paddle is imported only for the real one)."""
    if config.runner == "synthetic":
        from engine_pod.model.synthetic import SyntheticModelRunner

        return SyntheticModelRunner(config.model, step_delay_s=config.synthetic_step_ms / 1000.0)
    from engine_pod.model.paddle_runner import PaddleModelRunner

    return PaddleModelRunner(
        config.model,
        device=config.device,
        seed=config.seed,
        cuda_graphs=config.cuda_graphs,
        max_graph_batch=config.cuda_graph_max_batch,
    )


def sampling_from_wire(d: dict[str, Any]) -> SamplingParams:
    stop = d.get("stop") or ()
    if isinstance(stop, str):
        stop = (stop,)
    return SamplingParams(
        max_tokens=int(d.get("max_tokens", 16)),
        temperature=float(d.get("temperature", 1.0)),
        top_p=float(d.get("top_p", 1.0)),
        top_k=int(d.get("top_k", -1)),
        seed=d.get("seed"),
        stop=tuple(s for s in stop if s),
        ignore_eos=bool(d.get("ignore_eos", False)),
    )


class EngineProcess:
    """Receives messages, admits requests, serializes control calls."""

    def __init__(
        self, config: EngineConfig, core: EngineCore, sender: OutputSender, pull: zmq.Socket
    ) -> None:
        self.config = config
        self.core = core
        self.sender = sender
        self.pull = pull
        self.tokenizer = core.runner.tokenizer
        self._control: queue.Queue[dict | None] = queue.Queue()

    # -- threads ------------------------------------------------------------------
    def serve(self) -> None:
        loop = threading.Thread(target=self.core.run_loop, name="engine-loop", daemon=True)
        control = threading.Thread(target=self._control_worker, name="control", daemon=True)
        loop.start()
        control.start()
        parent = os.getppid()
        try:
            while True:
                if not self.pull.poll(1000):
                    if os.getppid() != parent:
                        log.warning("API server process is gone; engine exiting")
                        return
                    continue
                try:
                    msg = self.pull.recv_json()
                except ValueError:
                    log.warning("dropped a message that is not JSON")
                    continue
                if msg.get("op") == "shutdown":
                    log.info("shutdown requested")
                    return
                self._dispatch(msg)
        finally:
            self.core.stop()
            self._control.put(None)
            loop.join(5)

    def _dispatch(self, msg: dict) -> None:
        op = msg.get("op")
        if op == "add":
            self._add(msg)
        elif op == "abort":
            ids = [i for i in (msg.get("ids") or []) if isinstance(i, str) and i]
            skipped = len(msg.get("ids") or []) - len(ids)
            if skipped:
                log.warning("abort: skipped %d entries without a request id", skipped)
            if ids:
                self.core.abort(ids)
        elif op == "control":
            if msg.get("cmd") in IMMEDIATE_COMMANDS:
                self._answer(msg)
            else:
                self._control.put(msg)
        else:
            log.warning("dropped a message with unknown op %r", op)

    def _control_worker(self) -> None:
        while (msg := self._control.get()) is not None:
            self._answer(msg)

    # -- requests -----------------------------------------------------------------
    def _reject(self, rid: str, status: int, type_: str, message: str) -> None:
        self.sender.put(
            {"kind": "rejected", "id": rid, "status": status, "type": type_, "message": message}
        )

    def _add(self, msg: dict) -> None:
        rid = msg.get("id")
        if not isinstance(rid, str) or not rid:
            log.warning("add: skipped a request without an id")
            return
        try:
            sampling = sampling_from_wire(msg.get("sampling") or {})
            if msg.get("prompt_token_ids") is not None:
                prompt_ids = [int(t) for t in msg["prompt_token_ids"]]
            elif msg.get("messages") is not None:
                prompt_ids = self.tokenizer.encode(
                    self.tokenizer.apply_chat_template(msg["messages"])
                )
            else:
                prompt_ids = self.tokenizer.encode(str(msg.get("prompt", "")))
        except (TypeError, ValueError, KeyError) as e:
            self._reject(rid, 400, "invalid_request_error", f"bad request: {e}")
            return
        problem = self.core.validate(prompt_ids, sampling.max_tokens)
        if problem:
            self._reject(rid, 400, "invalid_request_error", problem)
            return
        admission = self.core.add_request(Request(rid, prompt_ids, sampling))
        # ACCEPTED: the core sent "accepted"; QUEUED: it sends "accepted" on resume.
        if admission is Admission.FULL:
            self._reject(
                rid,
                503,
                "admission_queue_full",
                f"engine is {self.core.state.value} and its admission queue is full "
                f"({self.config.admission_queue_size} requests held); retry after resume",
            )
        elif admission is Admission.CLOSED:
            self._reject(
                rid, 503, "engine_paused", f"engine is {self.core.state.value}; retry after resume"
            )

    # -- control ------------------------------------------------------------------
    def _answer(self, msg: dict) -> None:
        call, cmd, args = msg.get("call"), msg.get("cmd"), msg.get("args") or {}
        try:
            result = self._run_command(cmd, args)
            reply = {"kind": "reply", "call": call, "status": 200, "result": result}
        except ControlError as e:
            reply = {"kind": "reply", "call": call, "status": e.status, "error": e.message}
        except Exception as e:
            log.exception("control command %s failed", cmd)
            reply = {
                "kind": "reply",
                "call": call,
                "status": 500,
                "error": f"{type(e).__name__}: {e}",
            }
        self.sender.put(reply)

    def _run_command(self, cmd: str | None, args: dict) -> dict:
        core = self.core
        if cmd == "pause":
            return core.pause(
                args.get("timeout_s"),
                args.get("stage"),
                args.get("mode", "abort"),
                args.get("admission", "reject"),
            )
        if cmd == "resume":
            return core.resume()
        if cmd == "update_weights":
            return core.update_weights(
                str(args["path"]),
                str(args.get("version") or os.path.basename(args["path"])),
                args.get("digest"),
            )
        if cmd == "abort":
            aborted, not_found = core.abort(
                [i for i in args.get("ids", []) if isinstance(i, str) and i]
            )
            return {"aborted": aborted, "not_found": not_found}
        if cmd == "abort_all":
            aborted, _ = core.abort(core.all_request_ids())
            return {"aborted": aborted, "not_found": []}
        if cmd == "stats":
            return core.stats()
        raise ControlError(400, f"unknown control command {cmd!r}")


def model_info_message(config: EngineConfig, core: EngineCore) -> dict:
    info = core.runner.info
    name = config.served_model_name or (
        os.path.basename(os.path.normpath(config.model)) if config.model else info.name
    )
    return {
        "kind": "ready",
        "info": {
            "model": name,
            "architecture": info.architecture,
            "max_model_len": core.max_model_len,
            "vocab_size": info.vocab_size,
            "runner": config.runner,
            "total_blocks": core.blocks.num_blocks,
            "block_size": core.blocks.block_size,
            "instance": uuid.uuid4().hex[:8],
        },
        **{k: v for k, v in core.state_message().items() if k != "kind"},
    }


def run_engine_process(config: EngineConfig, addrs: IpcAddresses) -> None:
    """Entry point of the engine process (spawned by the API server)."""
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s [engine] %(name)s: %(message)s",
    )
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.connect(addrs.input)
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 2000)
    push.connect(addrs.output)
    sender = OutputSender(push)
    try:
        t0 = time.monotonic()
        # One pass over the bytes, as in update_weights: the loader hashes what it reads,
        # and the digest (checked against --weights-digest) comes from those hashes.
        with recording_loads() as loaded:
            runner = build_runner(config)
            prepared = runner.prepare_weights(config.weights_path) if config.weights_path else None
        weights_dir = config.weights_path or getattr(runner, "weights_path", None) or config.model
        digest = ""
        if weights_dir:
            expected = config.weights_digest if config.weights_path else None
            digest = verify_checkpoint(weights_dir, expected, known=loaded.file_sha256)
        version = config.weights_version or "base"
        if prepared is not None:
            # Swapped in only once verified: a replica never serves unverified weights.
            runner.swap_weights(prepared)
            version = config.weights_version or os.path.basename(
                os.path.normpath(config.weights_path)
            )
        core = EngineCore(config, runner, sender.put, sender.flush, version, digest)
        log.info(
            "model loaded in %.2fs (runner=%s, weights=%s)",
            time.monotonic() - t0,
            config.runner,
            version,
        )
    except Exception as e:
        log.exception("engine failed to start")
        sender.put({"kind": "fatal", "message": f"{type(e).__name__}: {e}"})
        sender.close()
        raise SystemExit(1) from e
    sender.put(model_info_message(config, core))
    try:
        EngineProcess(config, core, sender, pull).serve()
    finally:
        sender.close()
        ctx.destroy(linger=0)
