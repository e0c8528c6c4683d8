"""OpenAI-compatible generation routes: /v1/completions, /v1/chat/completions, /v1/models.

Every response carries the generated `token_ids` too (RL trainers need them).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from engine_pod.api.engine_client import EngineClient, EngineUnavailable
from engine_pod.api.errors import error_response, paused_response
from engine_pod.api.metrics import ApiMetrics
from engine_pod.api.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields

DEFAULT_MAX_TOKENS = 16


def _sse(obj: dict | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n"


class _Generation:
    """One request's trip through the engine and back, shaped as completion or chat."""

    def __init__(
        self, client: EngineClient, metrics: ApiMetrics, body: SamplingFields, chat: bool
    ) -> None:
        self.client = client
        self.metrics = metrics
        self.body = body
        self.chat = chat
        self.id = body.request_id or f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = client.info.get("model", "")
        self.object = "chat.completion" if chat else "text_completion"

    async def start(self, payload: dict) -> asyncio.Queue | Response:
        """Submit; returns the message queue, or the error response to send instead."""
        c = self.client
        if not c.alive or not c.ready.is_set():
            return error_response(
                503, "engine_unavailable", c.fatal or "engine is starting", retry_after=1
            )
        if not c.admitting:
            self.metrics.requests.labels("rejected_paused").inc()
            return paused_response(c.state)
        if c.has_request(self.id):
            return error_response(
                400, "invalid_request_error", f"request_id {self.id!r} is already in flight"
            )
        try:
            q = await c.submit(self.id, payload)
        except EngineUnavailable as e:
            return error_response(503, "engine_unavailable", str(e), retry_after=1)
        first = await q.get()
        if first["kind"] == "accepted":
            self.prompt_tokens = first.get("prompt_tokens", 0)
            return q
        if first["kind"] == "rejected":
            self.metrics.requests.labels(
                "rejected_paused" if first["status"] == 503 else "invalid"
            ).inc()
            retry = 1 if first["status"] == 503 else None
            return error_response(
                first["status"], first["type"], first["message"], retry_after=retry
            )
        return error_response(
            503, "engine_unavailable", first.get("message", "engine failed"), retry_after=1
        )

    def _choice(self, text: str, token_ids: list[int], finish: str | None, delta: bool) -> dict:
        if not self.chat:
            return {
                "index": 0,
                "text": text,
                "token_ids": token_ids,
                "logprobs": None,
                "finish_reason": finish,
            }
        key = "delta" if delta else "message"
        content = {"content": text} if delta else {"role": "assistant", "content": text}
        return {"index": 0, key: content, "token_ids": token_ids, "finish_reason": finish}

    def _envelope(self, choice: dict, chunk: bool) -> dict:
        obj = self.object + (".chunk" if chunk and self.chat else "")
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }

    def _usage(self, completion_tokens: int) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        }

    async def collect(self, q: asyncio.Queue) -> Response:
        text, tokens = [], []
        while True:
            item = await q.get()
            if item["kind"] == "error":
                self.metrics.requests.labels("error").inc()
                return error_response(500, "engine_error", item["message"])
            text.append(item["x"])
            tokens.extend(item["t"])
            if item["f"]:
                break
        self.metrics.requests.labels(item["f"]).inc()
        body = self._envelope(
            self._choice("".join(text), tokens, item["f"], delta=False), chunk=False
        )
        body["usage"] = self._usage(item["c"])
        return JSONResponse(body, headers={"X-Request-Id": self.id})

    async def stream(self, q: asyncio.Queue) -> AsyncIterator[str]:
        finished = False
        try:
            if self.chat:
                yield _sse(
                    self._envelope(
                        {"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}, True
                    )
                )
            completion_tokens = 0
            while True:
                item = await q.get()
                if item["kind"] == "error":
                    self.metrics.requests.labels("error").inc()
                    yield _sse(
                        {"error": {"type": "engine_error", "message": item["message"], "code": 500}}
                    )
                    finished = True
                    break
                completion_tokens = item["c"]
                yield _sse(
                    self._envelope(self._choice(item["x"], item["t"], item["f"], delta=True), True)
                )
                if item["f"]:
                    finished = True
                    self.metrics.requests.labels(item["f"]).inc()
                    break
            opts = self.body.stream_options
            if opts is not None and opts.include_usage:
                usage = {
                    **self._envelope({}, True),
                    "choices": [],
                    "usage": self._usage(completion_tokens),
                }
                yield _sse(usage)
            yield _sse("[DONE]")
        finally:
            if not finished:  # the client went away: free its KV now
                self.metrics.requests.labels("client_disconnected").inc()
                asyncio.get_running_loop().create_task(self.client.abort([self.id]))


def build_openai_router(client: EngineClient, metrics: ApiMetrics) -> APIRouter:
    router = APIRouter()

    async def generate(body: SamplingFields, payload: dict, chat: bool) -> Response:
        gen = _Generation(client, metrics, body, chat)
        started = await gen.start(payload)
        if isinstance(started, Response):
            return started
        if body.stream:
            return StreamingResponse(
                gen.stream(started),
                media_type="text/event-stream",
                headers={"X-Request-Id": gen.id},
            )
        return await gen.collect(started)

    @router.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        payload = {"sampling": body.sampling(DEFAULT_MAX_TOKENS)}
        if isinstance(body.prompt, str):
            payload["prompt"] = body.prompt
        else:
            payload["prompt_token_ids"] = body.prompt
        return await generate(body, payload, chat=False)

    @router.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        if body.max_completion_tokens and not body.max_tokens:
            body.max_tokens = body.max_completion_tokens
        payload = {
            "messages": [m.model_dump() for m in body.messages],
            "sampling": body.sampling(DEFAULT_MAX_TOKENS),
        }
        return await generate(body, payload, chat=True)

    @router.get("/v1/models")
    async def models() -> dict:
        info = client.info
        return {
            "object": "list",
            "data": [
                {
                    "id": info.get("model", ""),
                    "object": "model",
                    "owned_by": "rlfleet",
                    "max_model_len": info.get("max_model_len"),
                    "weights_version": client.weights_version,
                }
            ],
        }

    return router
