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
        """The new text of the last token(s), decoding only a window of the output: the tokens
        from `detok_prefix` (context, already shown) on, against those up to `detok_read`
        (O(1) a token, not O(output); the window keeps word-boundary spaces right)."""
        ids = req.output_token_ids
        shown = self.tokenizer.decode(ids[req.detok_prefix : req.detok_read])
        text = self.tokenizer.decode(ids[req.detok_prefix :])
        if len(text) <= len(shown) or text.endswith("\ufffd"):
            return ""  # nothing printable yet (an incomplete UTF-8 sequence): wait for more
        req.detok_prefix, req.detok_read = req.detok_read, len(ids)
        return text[len(shown) :]

    def finish_reason(self, req: Request) -> FinishReason | None:
        """The finish rules that need no text (EOS, max_tokens, the context length), for the
        token just appended."""
        sp = req.sampling
        if not sp.ignore_eos and req.output_token_ids[-1] == self.tokenizer.eos_token_id:
            return FinishReason.STOP
        if len(req.output_token_ids) >= sp.max_tokens or req.num_tokens >= self.max_model_len:
            return FinishReason.LENGTH
        return None

    def render(self, req: Request) -> RequestOutput:
        """The message for the token just appended to a request without stop strings, whose
        finish (`finish_reason`) was already applied: the token and its text."""
        token = req.output_token_ids[-1]
        eos = req.finish_reason is FinishReason.STOP and token == self.tokenizer.eos_token_id
        req.text += "" if eos else self._text_delta(req)
        delta = req.text[req.text_sent :]
        req.text_sent = len(req.text)
        return self.snapshot(req, [token], delta)

    def process_token(self, req: Request) -> RequestOutput:
        """Called after a token was appended to `req`; decides whether it finished (does not free it).

        With stop strings, the last `longest stop - 1` characters are held back until the next
        token shows they do not start a stop string (or the request ends), so no streamed
        delta ever holds part of the stop string that ends the text."""
        sp = req.sampling
        if not sp.stop:
            reason = self.finish_reason(req)
            if reason is not None:
                req.finish(reason)
            return self.render(req)
        reason = self.finish_reason(req)  # STOP here is EOS: its token has no text
        new = "" if reason is FinishReason.STOP else self._text_delta(req)
        longest = max(len(s) for s in sp.stop)
        start = max(0, len(req.text) - longest + 1)  # where a stop string could newly end
        req.text += new
        hits = [i for i in (req.text.find(s, start) for s in sp.stop) if i >= 0] if new else []
        if hits:  # a stop string wins over the length limit of the same token
            req.text = req.text[: min(hits)]
            reason = FinishReason.STOP
        hold = 0 if reason is not None else longest - 1
        end = max(req.text_sent, len(req.text) - hold)
        delta = req.text[req.text_sent : end]
        req.text_sent = end
        if reason is not None:
            req.finish(reason)
        return self.snapshot(req, [req.output_token_ids[-1]], delta)

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
