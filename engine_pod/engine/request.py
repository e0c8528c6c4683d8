"""A generation request as the engine core tracks it, and why it finished."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from engine_pod.model.base import SamplingParams


class FinishReason(str, enum.Enum):
    STOP = "stop"  # EOS or a stop string
    LENGTH = "length"  # max_tokens or the context length
    ABORT = "abort"  # aborted by a client, a pause, or a forced reset


class RequestStatus(str, enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"  # back in the waiting queue, KV freed, tokens kept
    FINISHED = "finished"


@dataclass
class Request:
    """One sequence: prompt, generated tokens, progress through the KV cache."""

    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams
    output_token_ids: list[int] = field(default_factory=list)
    status: RequestStatus = RequestStatus.WAITING
    num_computed_tokens: int = 0  # tokens whose KV is in the cache
    num_cached_tokens: int = 0  # of those, reused from the prefix cache at admission
    finish_reason: FinishReason | None = None
    arrival_time: float = field(default_factory=time.monotonic)
    text: str = ""  # detokenized output so far (kept by the output processor)
    text_sent: int = 0  # characters of `text` streamed so far (the rest may start a stop string)
    detok_prefix: int = 0  # output tokens before the detokenizer's window (OutputProcessor)
    detok_read: int = 0  # output tokens whose text is in `text`
    num_preemptions: int = 0

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    def token_slice(self, start: int, n: int) -> list[int]:
        """`all_token_ids[start : start + n]` without building the whole list (a decode
        step's one token costs O(1), not O(context))."""
        p = len(self.prompt_token_ids)
        if start >= p:
            return self.output_token_ids[start - p : start - p + n]
        if start + n <= p:
            return self.prompt_token_ids[start : start + n]
        return self.prompt_token_ids[start:] + self.output_token_ids[: start + n - p]

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED

    def finish(self, reason: FinishReason) -> None:
        self.status = RequestStatus.FINISHED
        self.finish_reason = reason
