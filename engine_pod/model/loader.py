"""Hugging Face-layout checkpoint loading and validation (numpy only, no Paddle).

`check_checkpoint` validates a directory from its safetensors *headers* (every expected
tensor present, nothing unexpected, exact shapes, dtype = config's torch_dtype);
`load_checkpoint` then reads the data as float32 numpy arrays. Any defect raises
`CheckpointError` with a message naming the file, tensor and shapes.
"""

from __future__ import annotations

import glob
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from engine_pod.model.base import CheckpointError
from engine_pod.model.hf_config import ModelConfig, load_config
from engine_pod.model.safetensors_io import (
    TORCH_TO_ST,
    TensorInfo,
    read_header,
    read_tensor,
    to_float32,
)

# Present in some exports, harmless: ignored rather than rejected.
_TOLERATED = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")


def expected_tensors(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """HF tensor name → exact shape for this config."""
    h, d, i = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    q_out, kv_out = cfg.num_heads * d, cfg.num_kv_heads * d
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (cfg.vocab_size, h)}
    for n in range(cfg.num_layers):
        p = f"model.layers.{n}."
        out[p + "input_layernorm.weight"] = (h,)
        out[p + "post_attention_layernorm.weight"] = (h,)
        out[p + "self_attn.q_proj.weight"] = (q_out, h)
        out[p + "self_attn.k_proj.weight"] = (kv_out, h)
        out[p + "self_attn.v_proj.weight"] = (kv_out, h)
        out[p + "self_attn.o_proj.weight"] = (h, q_out)
        if cfg.qkv_bias:
            out[p + "self_attn.q_proj.bias"] = (q_out,)
            out[p + "self_attn.k_proj.bias"] = (kv_out,)
            out[p + "self_attn.v_proj.bias"] = (kv_out,)
        if cfg.o_bias:
            out[p + "self_attn.o_proj.bias"] = (h,)
        out[p + "mlp.gate_proj.weight"] = (i, h)
        out[p + "mlp.up_proj.weight"] = (i, h)
        out[p + "mlp.down_proj.weight"] = (h, i)
    out["model.norm.weight"] = (h,)
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = (cfg.vocab_size, h)
    return out


@dataclass(frozen=True)
class CheckedCheckpoint:
    """A directory whose headers passed validation: config + where each tensor lives."""

    model_dir: str
    config: ModelConfig
    tensors: dict[str, TensorInfo]


def _is_tolerated(name: str, cfg: ModelConfig) -> bool:
    return bool(_TOLERATED.fullmatch(name)) or (
        cfg.tie_word_embeddings and name == "lm_head.weight"
    )


def check_checkpoint(model_dir: str, cfg: ModelConfig | None = None) -> CheckedCheckpoint:
    """Validate config.json and every safetensors header in `model_dir` without reading data."""
    if not os.path.isdir(model_dir):
        raise CheckpointError(f"{model_dir}: not a directory")
    cfg = cfg or load_config(model_dir)
    files = sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))
    if not files:
        raise CheckpointError(f"{model_dir}: no *.safetensors files")
    found: dict[str, TensorInfo] = {}
    for path in files:
        for name, info in read_header(path).items():
            if name in found:
                raise CheckpointError(
                    f"tensor {name!r} appears in both {os.path.basename(found[name].file)} "
                    f"and {os.path.basename(path)}"
                )
            found[name] = info
    expected = expected_tensors(cfg)
    missing = [n for n in expected if n not in found]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise CheckpointError(f"missing tensor(s) {', '.join(missing[:3])}{more} in {model_dir}")
    unexpected = sorted(n for n in found if n not in expected and not _is_tolerated(n, cfg))
    if unexpected:
        more = f" (and {len(unexpected) - 3} more)" if len(unexpected) > 3 else ""
        raise CheckpointError(
            f"unexpected tensor(s) {', '.join(unexpected[:3])}{more} in {model_dir} "
            f"for {cfg.architecture}"
        )
    want_tag = TORCH_TO_ST[cfg.dtype]
    for name, shape in expected.items():
        info = found[name]
        if info.shape != shape:
            raise CheckpointError(
                f"{os.path.basename(info.file)}: tensor {name!r} has shape {list(info.shape)}, "
                f"expected {list(shape)}"
            )
        if info.dtype != want_tag:
            raise CheckpointError(
                f"{os.path.basename(info.file)}: tensor {name!r} has dtype {info.dtype}, "
                f"but config.json torch_dtype is {cfg.dtype} ({want_tag})"
            )
    return CheckedCheckpoint(model_dir, cfg, {n: found[n] for n in expected})


def load_checkpoint(model_dir: str) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """Validate then read every tensor as float32 numpy (tied lm_head not duplicated)."""
    checked = check_checkpoint(model_dir)
    weights = {n: to_float32(read_tensor(t), t.dtype) for n, t in checked.tensors.items()}
    return checked.config, weights


def check_same_architecture(current: ModelConfig, new: ModelConfig) -> None:
    """Raise CheckpointError if `new` cannot replace `current` in a running engine."""
    a, b = current.shape_signature(), new.shape_signature()
    diffs = [f"{k} {a[k]!r} -> {b[k]!r}" for k in a if a[k] != b[k]]
    if diffs:
        raise CheckpointError(
            "new checkpoint does not match the serving model: " + "; ".join(diffs)
        )


def validate_update(current: ModelConfig, new_dir: str) -> CheckedCheckpoint:
    """Headers-level validation of a weight update: same architecture and shapes as `current`."""
    new_cfg = load_config(new_dir)
    check_same_architecture(current, new_cfg)
    return check_checkpoint(new_dir, new_cfg)


@dataclass
class LoadRecord:
    """What checkpoint loads did on one thread inside `recording_loads()`."""

    read_s: float = 0.0  # header validation + reading the data (and hashing it)
    file_sha256: dict[str, str] = field(default_factory=dict)  # abs path → sha256 of bytes read


_recording = threading.local()


@contextmanager
def recording_loads() -> Iterator[LoadRecord]:
    """Record the checkpoint loads of this thread made inside the block (timings, file hashes)."""
    rec = LoadRecord()
    outer = getattr(_recording, "record", None)
    _recording.record = rec
    try:
        yield rec
    finally:
        _recording.record = outer


def load_update(current: ModelConfig, new_dir: str) -> dict[str, np.ndarray]:
    """`validate_update` then read the data as float32 numpy."""
    t0 = time.monotonic()
    checked = validate_update(current, new_dir)
    w = {n: to_float32(read_tensor(t), t.dtype) for n, t in checked.tensors.items()}
    rec = getattr(_recording, "record", None)
    if rec is not None:
        rec.read_s += time.monotonic() - t0
    return w
