"""Tokenizer: a thin wrapper over the `tokenizers` package, and the byte-level one we generate."""

from __future__ import annotations

import json
import os
from typing import Any

from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as _HFTok

from engine_pod.model.base import CheckpointError

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable-character map used by ByteLevel pre-tokenizers."""
    keep = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping, extra = {}, 0
    for b in range(256):
        if b in keep:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def build_byte_tokenizer_json() -> str:
    """A byte-level BPE tokenizer: id b = byte b (0..255), then SPECIAL_TOKENS; any text round-trips."""
    vocab = {ch: b for b, ch in _byte_to_unicode().items()}
    tok = _HFTok(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIAL_TOKENS])
    # Re-dump with sorted keys so the file is byte-identical across runs and versions' map orders.
    return json.dumps(json.loads(tok.to_str()), indent=1, sort_keys=True, ensure_ascii=False)


def _token_content(v: Any) -> str | None:
    if isinstance(v, str):
        return v
    if isinstance(v, dict) and isinstance(v.get("content"), str):
        return v["content"]
    return None


class HFTokenizer:
    """`Tokenizer` protocol over `tokenizer.json` (+ `tokenizer_config.json` for the eos token).

    Chat formatting is always ChatML (`<|im_start|>role\\ncontent<|im_end|>\\n`...); a
    jinja `chat_template` in tokenizer_config.json is not executed.
    """

    def __init__(self, model_dir: str, eos_token_id: int | None = None) -> None:
        path = os.path.join(model_dir, "tokenizer.json")
        if not os.path.exists(path):
            raise CheckpointError(f"{model_dir}: no tokenizer.json")
        try:
            self._tok = _HFTok.from_file(path)
        except Exception as e:  # the Rust side raises plain Exception subclasses
            raise CheckpointError(f"tokenizer.json: cannot load: {e}") from e
        self.eos_token_id = eos_token_id
        cfg_path = os.path.join(model_dir, "tokenizer_config.json")
        if os.path.exists(cfg_path):
            try:
                with open(cfg_path, encoding="utf-8") as f:
                    tcfg = json.load(f)
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise CheckpointError(f"tokenizer_config.json: not valid JSON: {e}") from e
            eos = _token_content(tcfg.get("eos_token")) if isinstance(tcfg, dict) else None
            if eos is not None and self._tok.token_to_id(eos) is not None:
                self.eos_token_id = self._tok.token_to_id(eos)
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        ids = [t for t in token_ids if 0 <= t < self.vocab_size]
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        parts = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
        return "".join(parts) + "<|im_start|>assistant\n"


def load_tokenizer(model_dir: str, eos_token_id: int | None = None) -> HFTokenizer:
    """Load the tokenizer of an HF-layout dir; `eos_token_id` (from config.json) is the fallback."""
    return HFTokenizer(model_dir, eos_token_id)
