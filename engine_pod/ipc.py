"""The ZMQ channel between the API server and the engine process.

Two PUSH/PULL pipes over `ipc://` sockets, JSON messages:

API → engine (`input`):
    {"op": "add", "id", "prompt" | "prompt_token_ids" | "messages", "sampling": {...}}
    {"op": "abort", "ids": [...]}                      fire-and-forget (client went away)
    {"op": "control", "call": n, "cmd": str, "args": {...}}   answered by a "reply"
        pause: {timeout_s, stage, mode, admission}; update_weights: {path, version, digest}

engine → API (`output`), in the order the engine produced them:
    {"kind": "ready", "info": {...}}                   model loaded, serving
    {"kind": "accepted", "id", "prompt_tokens"}        (held while paused: sent on resume)
    {"kind": "rejected", "id", "status", "type", "message"}
    {"kind": "out", "items": [{"id", "t": tokens, "x": text, "f": finish_reason|None, "p", "c"}]}
    {"kind": "state", "state", "weights_version", "weights_digest", "loading",
     "mode", "admission"}                              (mode / admission of the pause; None running)
    {"kind": "reply", "call", "status": int, "result" | "error"}
    {"kind": "fatal", "message"}                       the engine cannot serve

One ordered output pipe is what makes the pause contract hold: a request's
tokens, its terminal message and the pause reply leave in that order.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from dataclasses import dataclass


@dataclass(frozen=True)
class IpcAddresses:
    input: str
    output: str

    @staticmethod
    def fresh() -> IpcAddresses:
        base = os.path.join(tempfile.gettempdir(), f"rlfleet-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        return IpcAddresses(input=f"ipc://{base}-in", output=f"ipc://{base}-out")

    def cleanup(self) -> None:
        for addr in (self.input, self.output):
            try:
                os.unlink(addr.removeprefix("ipc://"))
            except OSError:
                pass


# Control commands answered by the control thread, one at a time, in order.
SERIAL_COMMANDS = frozenset({"pause", "resume", "update_weights"})
# Control commands answered at once by the I/O thread (never wait behind a pause).
IMMEDIATE_COMMANDS = frozenset({"abort", "abort_all", "stats"})
