"""Token processor: turns sampled tokens into per-request text deltas and finish decisions."""

from __future__ import annotations

from dataclasses import dataclass

from engine_pod.engine.request import FinishReason, Request
from engine_pod.model.base import Tokenizer


@dataclass
class RequestOutput:
    """One message to a request's stream: new tokens and text, and the terminal fields when it ends."""

    request_id: str
    token_ids: list[int]
    text: str
    finished: bool = False
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def to_wire(self) -> dict:
        return {
            "id": self.request_id,
            "t": self.token_ids,
            "x": self.text,
            "f": self.finish_reason if self.finished else None,
            "p": self.prompt_tokens,
            "c": self.completion_tokens,
        }


class OutputProcessor:
    """Incremental detokenization plus the stop rules: EOS, stop strings, max_tokens, context length."""

    def __init__(self, tokenizer: Tokenizer, max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len

    def _text_delta(self, req: Request) -> str:
        full = self.tokenizer.decode(req.output_token_ids)
        if full.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            return ""
        if not full.startswith(req.text):
            return ""
        return full[len(req.text) :]

    def process_token(self, req: Request) -> RequestOutput:
        """Called after a token was appended to `req`; decides whether it finished (does not free it)."""
        token = req.output_token_ids[-1]
        sp = req.sampling
        delta = self._text_delta(req)
        reason: FinishReason | None = None
        if not sp.ignore_eos and token == self.tokenizer.eos_token_id:
            reason, delta = FinishReason.STOP, ""
        elif sp.stop and delta:
            text = req.text + delta
            # Search only where a stop string could newly end.
            window_start = max(0, len(req.text) - max(len(s) for s in sp.stop) + 1)
            hits = [(text.find(s, window_start), s) for s in sp.stop]
            hits = [(i, s) for i, s in hits if i >= 0]
            if hits:
                cut = min(i for i, _ in hits)
                delta = text[len(req.text) : cut] if cut >= len(req.text) else ""
                reason = FinishReason.STOP
        if reason is None and (
            len(req.output_token_ids) >= sp.max_tokens or req.num_tokens >= self.max_model_len
        ):
            reason = FinishReason.LENGTH
        req.text += delta
        if reason is not None:
            req.finish(reason)
        return self.snapshot(req, [token], delta)

    @staticmethod
    def snapshot(req: Request, token_ids: list[int], delta: str) -> RequestOutput:
        return RequestOutput(
            request_id=req.request_id,
            token_ids=token_ids,
            text=delta,
            finished=req.is_finished,
            finish_reason=req.finish_reason.value if req.finish_reason else None,
            prompt_tokens=len(req.prompt_token_ids),
            completion_tokens=len(req.output_token_ids),
        )
