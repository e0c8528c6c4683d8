"""The contract between the engine core and a model runner.

The engine core (scheduler, block manager, state machine) never touches tensors.
Each step it hands the runner a list of `SeqWork`: for every scheduled sequence,
the tokens to compute this step, where they start, the sequence's block table,
and whether the step ends at the sequence's last known token (then one token is
sampled for it). Two runners implement it:

- `engine_pod.model.paddle_runner.PaddleModelRunner`: the real Llama/Qwen2
  decoder in PaddlePaddle over a paged KV cache.
- `engine_pod.model.synthetic.SyntheticModelRunner`: the light replica for
  fleet-scale tests; no Paddle, deterministic fake tokens, same checkpoint
  validation of `config.json` and safetensors headers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings (OpenAI semantics)."""

    max_tokens: int = 16
    temperature: float = 1.0  # 0 → greedy
    top_p: float = 1.0
    top_k: int = -1  # -1 → off
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


# A look-ahead step's input token: the token the step launched just before it samples for
# the same request (not known on the host yet; the runner takes it where it is, on the device).
FEED_TOKEN = -1


@dataclass
class SeqWork:
    """One sequence's share of a step.

    `token_ids` are the tokens whose KV is computed (and written to the cache) this
    step, occupying positions `start_pos .. start_pos + len(token_ids) - 1`.
    `block_table[i]` is the physical block holding positions
    `i*block_size .. (i+1)*block_size-1`; it already covers every position written.
    When `sample` is true, one next token is sampled from the logits of the last
    position, using `sampling` and `num_generated` (tokens generated so far, so a
    seeded request draws the same random numbers whatever its batch).
    """

    request_id: str
    token_ids: list[int]
    start_pos: int
    block_table: list[int]
    sample: bool
    sampling: SamplingParams = field(default_factory=SamplingParams)
    num_generated: int = 0


@dataclass(frozen=True)
class ModelInfo:
    """What the engine needs to know about the loaded model."""

    name: str
    architecture: str  # "LlamaForCausalLM" | "Qwen2ForCausalLM"
    vocab_size: int
    max_model_len: int
    eos_token_id: int | None
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: str  # "float32" | "bfloat16" | "float16"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: missing files, wrong architecture, shapes or dtypes."""


class Tokenizer(Protocol):
    eos_token_id: int | None

    def encode(self, text: str) -> list[int]: ...
    def decode(self, token_ids: list[int]) -> str: ...
    def apply_chat_template(self, messages: list[dict[str, str]]) -> str: ...


class ModelRunner(Protocol):
    """What the engine core calls. Implementations are not thread-safe; the core serializes calls."""

    info: ModelInfo
    tokenizer: Tokenizer

    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> None:
        """Allocate (or re-allocate) the paged cache: `num_blocks` blocks of `block_size` slots per layer."""
        ...

    def execute(self, batch: list[SeqWork]) -> dict[str, int]:
        """Run one forward step over `batch`; return the sampled token for every item with `sample`."""
        ...

    # Optional: `launch(batch, feed=False) -> Callable[[], dict[str, int]] | None` starts a
    # step that runs on a device asynchronously and returns a function that waits for
    # `execute`'s answer (the engine core does host work meanwhile), or None when the step
    # cannot start that way (then the core calls `execute`). With `feed=True` (a look-ahead
    # step) every item is one decode token, FEED_TOKEN, of exactly the previous launch's
    # requests in its order: each input is the token that launch samples; None if the
    # runner cannot feed it (the core then drops the look-ahead step; never run it eagerly).

    def prepare_weights(self, path: str) -> object:
        """Load and validate a checkpoint directory; raise CheckpointError. Must not touch the serving weights."""
        ...

    def swap_weights(self, prepared: object) -> None:
        """Make weights returned by `prepare_weights` the serving ones (cheap, cannot fail)."""
        ...
