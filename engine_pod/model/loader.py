"""Hugging Face-layout checkpoint loading and validation (numpy only, no Paddle).

`check_checkpoint` validates a directory from its safetensors *headers* (every expected
tensor present, nothing unexpected, exact shapes, dtype = config's torch_dtype);
`load_checkpoint` then reads the data as float32 numpy arrays. Any defect raises
`CheckpointError` with a message naming the file, tensor and shapes.

Reading is one sequential pass per file, each tensor straight into a preallocated
float32 array; a layer's q/k/v (and gate/up) arrays are consecutive rows of one array,
so `build_weights` fuses them without copying. Inside `recording_loads()` the pass also
hashes every byte it reads (sha256 on a second thread), so the checkpoint digest can be
made from exactly the bytes loaded without reading the files again.
"""

from __future__ import annotations

import glob
import mmap
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
    BackgroundHasher,
    TensorInfo,
    read_file_into,
    read_header,
)

_OWN_MAPPING_BYTES = 1 << 20  # arrays from this size on get an anonymous mapping of their own

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


def fused_groups(cfg: ModelConfig) -> list[list[str]]:
    """Tensors the decoder stacks into one weight: each layer's q/k/v (weights, biases), gate/up."""
    groups = []
    for n in range(cfg.num_layers):
        p = f"model.layers.{n}."
        groups.append([p + f"self_attn.{x}_proj.weight" for x in "qkv"])
        if cfg.qkv_bias:
            groups.append([p + f"self_attn.{x}_proj.bias" for x in "qkv"])
        groups.append([p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"])
    return groups


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


@dataclass
class LoadRecord:
    """What checkpoint loads did on one thread inside `recording_loads()`."""

    read_s: float = 0.0  # header validation + reading the data, until its hash is done
    hash_s: float = 0.0  # sha256 time on the second thread (overlaps read_s)
    file_sha256: dict[str, str] = field(default_factory=dict)  # abs path → sha256 of bytes read


_recording = threading.local()


@contextmanager
def recording_loads() -> Iterator[LoadRecord]:
    """Record the checkpoint loads this thread makes inside the block: timings, and the
    sha256 of each file read, hashed from the very bytes loaded (for `verify_checkpoint`)."""
    rec = LoadRecord()
    outer = getattr(_recording, "record", None)
    _recording.record = rec
    try:
        yield rec
    finally:
        _recording.record = outer


def load_checkpoint(model_dir: str) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """Validate then read every tensor as float32 numpy (tied lm_head not duplicated)."""
    checked = check_checkpoint(model_dir)
    return checked.config, read_checked(checked)


def host_array(shape: tuple[int, ...]) -> np.ndarray:
    """An uninitialised float32 array; large ones in anonymous memory of their own.

    numpy asks for transparent huge pages on arrays of 4 MB and more; first-touching those
    cost 3-6x more than plain pages on the 2-core VM we measure on (2 GB: 3.4-5.6 s vs
    0.9-1.0 s). Paddle's own CPU tensors never asked for them, so serving weights keep
    the page size they always had.
    """
    nbytes = int(np.prod(shape, dtype=np.int64)) * 4
    if nbytes < _OWN_MAPPING_BYTES:
        return np.empty(shape, np.float32)
    mem = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return np.ndarray(shape, np.float32, buffer=mem)  # unmapped when the last view goes


def allocate_float32(checked: CheckedCheckpoint) -> dict[str, np.ndarray]:
    """Uninitialised float32 arrays for every tensor; each `fused_groups` group as
    consecutive rows of one array (the entries are views of it)."""
    shapes = {n: t.shape for n, t in checked.tensors.items()}
    out: dict[str, np.ndarray] = {}
    for group in fused_groups(checked.config):
        rows = sum(shapes[n][0] for n in group)
        stacked = host_array((rows, *shapes[group[0]][1:]))
        row = 0
        for n in group:
            out[n] = stacked[row : row + shapes[n][0]]
            row += shapes[n][0]
    for n, shape in shapes.items():
        if n not in out:
            out[n] = host_array(shape)
    return out


def read_checked(checked: CheckedCheckpoint) -> dict[str, np.ndarray]:
    """Read a validated checkpoint's tensors as float32 (see `allocate_float32`), one
    sequential pass per file; hashed on a second thread inside `recording_loads()`."""
    rec: LoadRecord | None = getattr(_recording, "record", None)
    t0 = time.monotonic()
    weights = allocate_float32(checked)
    by_file: dict[str, dict[str, TensorInfo]] = {}
    for name, info in checked.tensors.items():
        by_file.setdefault(info.file, {})[name] = info
    hasher = BackgroundHasher() if rec is not None else None
    try:
        for path, infos in sorted(by_file.items()):
            sha = read_file_into(path, infos, weights, hasher)
            if rec is not None and sha is not None:
                rec.file_sha256[os.path.abspath(path)] = sha
    finally:
        if hasher is not None:
            hasher.close()
    if rec is not None and hasher is not None:
        rec.read_s += time.monotonic() - t0
        rec.hash_s += hasher.busy_s
    return weights


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


def load_update(current: ModelConfig, new_dir: str) -> dict[str, np.ndarray]:
    """`validate_update` then read the data as float32 numpy (see `read_checked`)."""
    t0 = time.monotonic()
    checked = validate_update(current, new_dir)
    rec: LoadRecord | None = getattr(_recording, "record", None)
    if rec is not None:
        rec.read_s += time.monotonic() - t0  # header validation
    return read_checked(checked)
