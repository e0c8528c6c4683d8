"""Request bodies of the HTTP API (pydantic), validated before anything reaches the engine."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STOP_STRINGS = 8


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class SamplingFields(_Body):
    """Fields shared by completions and chat completions."""

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    temperature: float = Field(default=1.0, ge=0.0, le=10.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=-1, ge=-1)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1)
    ignore_eos: bool = False
    request_id: str | None = Field(default=None, min_length=1, max_length=128)

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
        return v

    def sampling(self, default_max_tokens: int) -> dict:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return {
            "max_tokens": self.max_tokens or default_max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "seed": self.seed,
            "stop": stop,
            "ignore_eos": self.ignore_eos,
        }


class CompletionRequest(SamplingFields):
    prompt: str | list[int] = Field(min_length=1)


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant", "tool"]
    content: str


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=1_000_000)


class PauseRequest(_Body):
    model_config = ConfigDict(extra="forbid")
    timeout_s: float | None = Field(default=None, gt=0, le=3600)
    stage: Literal["reject"] | None = None
    mode: Literal["abort", "retract", "keep"] = "abort"
    admission: Literal["reject", "queue"] = "reject"


class AbortRequest(_Body):
    model_config = ConfigDict(extra="forbid")
    request_ids: list[str | None] = Field(default_factory=list, max_length=100_000)
    abort_all: bool = False


class UpdateWeightsRequest(_Body):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(min_length=1)
    version: str = Field(min_length=1, max_length=253)
    # sha256 hex of the checkpoint manifest (see engine_pod.model.digest); refused on mismatch
    digest: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
