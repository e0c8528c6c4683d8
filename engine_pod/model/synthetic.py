"""`SyntheticModelRunner`: a STAND-IN model runner, not a model.

It exists so fleet-scale tests can run 64+ engine replicas on one machine: it imports
no Paddle and computes nothing. It parses the same `config.json` and tokenizer as the
real runner and validates weight updates the same way, but from the safetensors
*headers* only (names, shapes, dtypes; data is not loaded), raising the same
`CheckpointError` messages. `execute` returns deterministic tokens: a hash of (weights
fingerprint, the sequence's last token, its position, the request seed), never the
eos token, after sleeping `step_delay_s` to simulate a step's latency.
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from engine_pod.model.base import FEED_TOKEN, SeqWork
from engine_pod.model.hf_config import model_info
from engine_pod.model.loader import CheckedCheckpoint, check_checkpoint, validate_update
from engine_pod.model.step_plan import validate_item
from engine_pod.model.tiny import ensure_tiny_model
from engine_pod.model.tokenizer import load_tokenizer

_SAMPLE_BYTES = 64 * 1024


def weights_fingerprint(checked: CheckedCheckpoint) -> bytes:
    """A cheap identity of a checkpoint: tensor layout + the first/last 64 KiB of every file."""
    h = hashlib.sha256()
    for name in sorted(checked.tensors):
        t = checked.tensors[name]
        h.update(f"{name}:{t.dtype}:{t.shape}:{t.nbytes}".encode())
    for path in sorted({t.file for t in checked.tensors.values()}):
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            h.update(f.read(_SAMPLE_BYTES))
            f.seek(max(0, size - _SAMPLE_BYTES))
            h.update(f.read(_SAMPLE_BYTES))
    return h.digest()


@dataclass
class PreparedSynthetic:
    path: str
    fingerprint: bytes


class SyntheticModelRunner:
    """ModelRunner stand-in: real config/tokenizer/checkpoint validation, fake tokens."""

    def __init__(self, model_dir: str | None = None, step_delay_s: float = 0.0) -> None:
        self.model_dir = model_dir or ensure_tiny_model()
        checked = check_checkpoint(self.model_dir)
        self.config = checked.config
        self.info = model_info(self.model_dir, self.config)
        self.tokenizer = load_tokenizer(self.model_dir, self.config.eos_token_id)
        self.fingerprint = weights_fingerprint(checked)
        self.weights_path = self.model_dir
        self.step_delay_s = step_delay_s
        self.num_blocks = 0
        self.block_size = 0
        # Fake tokens stay inside what the tokenizer can decode.
        self._token_range = min(self.config.vocab_size, self.tokenizer.vocab_size)
        self._last_sampled: dict[str, int] = {}  # the last step's tokens, in batch order
        self._device_free_at = 0.0  # monotonic time the launched steps' delays end

    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks, self.block_size = num_blocks, block_size

    def _token(self, last: int, position: int, seed: int | None) -> int:
        msg = self.fingerprint + struct.pack("<qqq", last, position, -1 if seed is None else seed)
        tok = (
            int.from_bytes(hashlib.blake2b(msg, digest_size=8).digest(), "little")
            % self._token_range
        )
        if tok == self.info.eos_token_id:
            tok = (tok + 1) % self._token_range
        return tok

    def launch(
        self, batch: list[SeqWork], feed: bool = False
    ) -> Callable[[], dict[str, int]] | None:
        """As the GPU runner's graph steps: the step "runs" (its delay elapses) while the
        caller does other work; the returned function waits for the rest of it. A `feed`
        step's inputs are the tokens the previous launch sampled (base.py)."""
        if feed:
            prev = self._last_sampled
            if [w.request_id for w in batch] != list(prev) or not all(
                w.token_ids == [FEED_TOKEN] for w in batch
            ):
                return None
            batch = [replace(w, token_ids=[prev[w.request_id]]) for w in batch]
        return self._start(batch)

    def _start(self, batch: list[SeqWork]) -> Callable[[], dict[str, int]]:
        self._last_sampled = {}  # a failed step feeds nothing
        tokens = self._tokens(batch)
        self._last_sampled = tokens
        # one device: a step launched while another runs starts when that one ends
        start = max(time.monotonic(), self._device_free_at)
        end = self._device_free_at = start + (self.step_delay_s if batch else 0.0)

        def wait() -> dict[str, int]:
            left = end - time.monotonic()
            if left > 0:
                time.sleep(left)
            return tokens

        return wait

    def execute(self, batch: list[SeqWork]) -> dict[str, int]:
        return self._start(batch)()

    def _tokens(self, batch: list[SeqWork]) -> dict[str, int]:
        if not self.num_blocks:
            raise RuntimeError("allocate_kv_cache() must be called before execute()")
        for w in batch:
            validate_item(
                w, self.block_size, self.num_blocks, self.config.vocab_size, self.info.max_model_len
            )
        return {
            w.request_id: self._token(
                w.token_ids[-1], w.start_pos + len(w.token_ids) - 1, w.sampling.seed
            )
            for w in batch
            if w.sample
        }

    def prepare_weights(self, path: str) -> PreparedSynthetic:
        return PreparedSynthetic(path, weights_fingerprint(validate_update(self.config, path)))

    def swap_weights(self, prepared: object) -> None:
        if not isinstance(prepared, PreparedSynthetic):
            raise TypeError("swap_weights expects the result of prepare_weights")
        self.fingerprint = prepared.fingerprint
        self.weights_path = prepared.path
