"""The API server's side of the ZMQ channel: starts the engine process, routes its messages.

Every request gets an asyncio queue. The first message on it is `accepted` or
`rejected`; then `out` items until one carries a finish reason. If the engine
process dies, every open queue gets a terminal `error` item, so no caller waits
forever.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import time
from typing import Any

import zmq
import zmq.asyncio

from engine_pod.config import EngineConfig
from engine_pod.engine.process import run_engine_process
from engine_pod.ipc import IpcAddresses

log = logging.getLogger("rlfleet.api")


class EngineUnavailable(Exception):
    """The engine process is not serving (starting, dead, or a control call timed out)."""


class EngineClient:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.addrs = IpcAddresses.fresh()
        self._ctx = zmq.asyncio.Context()
        self._push = self._ctx.socket(zmq.PUSH)
        self._push.setsockopt(zmq.LINGER, 0)
        self._push.bind(self.addrs.input)
        self._pull = self._ctx.socket(zmq.PULL)
        self._pull.bind(self.addrs.output)
        self._streams: dict[str, asyncio.Queue] = {}
        self._calls: dict[int, asyncio.Future] = {}
        self._call_ids = itertools.count(1)
        self._tasks: list[asyncio.Task] = []
        self.process: multiprocessing.process.BaseProcess | None = None
        self.ready = asyncio.Event()
        self.info: dict[str, Any] = {}
        self.state = "starting"
        self.weights_version = ""
        self.weights_digest = ""
        self.weights_path = ""  # the checkpoint the served weights came from
        self.pause_mode: str | None = None
        self.admission: str | None = None  # of the current pause
        self.retracted = 0  # requests the current pause retracted
        self.kept = 0  # requests the current pause kept with their KV
        self.loading = False
        self.fatal: str | None = None
        self.started_at = time.monotonic()

    # -- lifecycle ----------------------------------------------------------------
    async def start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.process = ctx.Process(
            target=run_engine_process,
            args=(self.config, self.addrs),
            name="rlfleet-engine",
            daemon=True,
        )
        self.process.start()
        log.info("engine process started (pid %s, runner %s)", self.process.pid, self.config.runner)
        self._tasks = [
            asyncio.create_task(self._read_outputs()),
            asyncio.create_task(self._watch_process()),
        ]

    async def close(self) -> None:
        if self.process and self.process.is_alive():
            try:
                await self._push.send_json({"op": "shutdown"})
            except zmq.ZMQError:
                pass
            await asyncio.to_thread(self.process.join, 5)
            if self.process.is_alive():
                self.process.kill()
        for t in self._tasks:
            t.cancel()
        self._ctx.destroy(linger=0)
        self.addrs.cleanup()

    @property
    def alive(self) -> bool:
        return self.fatal is None and self.process is not None and self.process.is_alive()

    async def _watch_process(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            if self.process is not None and not self.process.is_alive():
                self._fail_all(f"engine process exited with code {self.process.exitcode}")
                return

    def _fail_all(self, message: str) -> None:
        if self.fatal is None:
            self.fatal = message
            log.error("engine unavailable: %s", message)
        for q in self._streams.values():
            q.put_nowait({"kind": "error", "message": message})
        self._streams.clear()
        for fut in self._calls.values():
            if not fut.done():
                fut.set_exception(EngineUnavailable(message))
        self._calls.clear()

    # -- inbound messages ---------------------------------------------------------
    async def _read_outputs(self) -> None:
        while True:
            try:
                msg = await self._pull.recv_json()
            except (asyncio.CancelledError, zmq.ZMQError):
                return
            try:
                self._route(msg)
            except Exception:
                log.exception("could not route engine message %r", msg.get("kind"))

    def _route(self, msg: dict) -> None:
        kind = msg.get("kind")
        if kind == "out":
            for item in msg["items"]:
                q = self._streams.get(item["id"])
                if q is None:
                    continue
                q.put_nowait({"kind": "out", **item})
                if item.get("f"):
                    self._streams.pop(item["id"], None)
        elif kind in ("accepted", "rejected"):
            q = self._streams.get(msg["id"])
            if q is not None:
                q.put_nowait(msg)
                if kind == "rejected":
                    self._streams.pop(msg["id"], None)
        elif kind == "reply":
            fut = self._calls.pop(msg.get("call"), None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        elif kind in ("state", "ready"):
            self.state = msg["state"]
            self.weights_version = msg["weights_version"]
            self.weights_digest = msg.get("weights_digest", "")
            self.weights_path = msg.get("weights_path", "")
            self.pause_mode = msg.get("mode")
            self.admission = msg.get("admission")
            self.retracted = msg.get("retracted", 0)
            self.kept = msg.get("kept", 0)
            self.loading = msg.get("loading", False)
            if kind == "ready":
                self.info = msg["info"]
                self.ready.set()
                log.info("engine ready: %s", self.info)
        elif kind == "fatal":
            self._fail_all(msg.get("message", "engine failed"))

    # -- outbound -----------------------------------------------------------------
    @property
    def admitting(self) -> bool:
        """Running, or paused with queue admission (the engine holds new requests until resume)."""
        if not (self.alive and self.ready.is_set()):
            return False
        return self.state == "running" or self.admission == "queue"

    def has_request(self, request_id: str) -> bool:
        return request_id in self._streams

    async def submit(self, request_id: str, payload: dict) -> asyncio.Queue:
        """Send a request to the engine; returns the queue its messages arrive on."""
        if not self.alive:
            raise EngineUnavailable(self.fatal or "engine not running")
        q: asyncio.Queue = asyncio.Queue()
        self._streams[request_id] = q
        await self._push.send_json({"op": "add", "id": request_id, **payload})
        return q

    async def abort(self, request_ids: list[str]) -> None:
        """Fire-and-forget abort (a client went away)."""
        if request_ids and self.alive:
            await self._push.send_json({"op": "abort", "ids": request_ids})

    async def call(self, cmd: str, args: dict | None = None, timeout: float = 60.0) -> dict:
        """A control call; returns the engine's reply `{"status", "result" | "error"}`."""
        if not self.alive:
            raise EngineUnavailable(self.fatal or "engine not running")
        call_id = next(self._call_ids)
        fut = asyncio.get_running_loop().create_future()
        self._calls[call_id] = fut
        await self._push.send_json(
            {"op": "control", "call": call_id, "cmd": cmd, "args": args or {}}
        )
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError as e:
            self._calls.pop(call_id, None)
            raise EngineUnavailable(f"engine did not answer {cmd} within {timeout:.0f}s") from e
