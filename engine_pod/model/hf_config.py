"""`config.json` of a Hugging Face Llama / Qwen2 checkpoint → `ModelConfig`."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from engine_pod.model.base import CheckpointError, ModelInfo

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM")
SUPPORTED_DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class ModelConfig:
    """The decoder hyper-parameters we serve (HF key names in comments)."""

    architecture: str  # architectures[0]
    hidden_size: int
    num_layers: int  # num_hidden_layers
    num_heads: int  # num_attention_heads
    num_kv_heads: int  # num_key_value_heads
    head_dim: int  # head_dim, else hidden_size // num_heads
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: tuple[tuple[str, Any], ...] | None  # rope_scaling dict, as sorted items
    max_position_embeddings: int
    tie_word_embeddings: bool
    dtype: str  # torch_dtype (or dtype): float32 | float16 | bfloat16
    qkv_bias: bool  # Qwen2: always; Llama: attention_bias
    o_bias: bool  # Llama attention_bias only
    eos_token_id: int | None
    bos_token_id: int | None

    def shape_signature(self) -> dict[str, Any]:
        """Everything a weight update must keep identical (all but the storage dtype)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "dtype"}

    def to_hf_dict(self) -> dict[str, Any]:
        """The `config.json` content for this config."""
        d: dict[str, Any] = {
            "architectures": [self.architecture],
            "model_type": "qwen2" if self.architecture == "Qwen2ForCausalLM" else "llama",
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.intermediate_size,
            "vocab_size": self.vocab_size,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": self.dtype,
            "hidden_act": "silu",
            "eos_token_id": self.eos_token_id,
            "bos_token_id": self.bos_token_id,
        }
        if self.rope_scaling is not None:
            d["rope_scaling"] = dict(self.rope_scaling)
        if self.architecture == "LlamaForCausalLM":
            d["attention_bias"] = self.qkv_bias
        return d


def _first_id(v: Any) -> int | None:
    if isinstance(v, list):
        v = v[0] if v else None
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def parse_config(raw: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """Validate a config.json dict; raise CheckpointError naming the offending key."""

    def get(key: str, kind: type, default: Any = None, required: bool = True) -> Any:
        if key not in raw or raw[key] is None:
            if required and default is None:
                raise CheckpointError(f"{source}: missing key {key!r}")
            return default
        v = raw[key]
        if kind is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
            raise CheckpointError(f"{source}: {key!r} must be {kind.__name__}, got {v!r}")
        if kind in (int, float) and v <= 0:
            raise CheckpointError(f"{source}: {key!r} must be positive, got {v!r}")
        return v

    archs = raw.get("architectures")
    if not isinstance(archs, list) or not archs:
        raise CheckpointError(f"{source}: missing key 'architectures'")
    arch = archs[0]
    if arch not in SUPPORTED_ARCHITECTURES:
        raise CheckpointError(
            f"{source}: unsupported architecture {arch!r} (supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    hidden = get("hidden_size", int)
    heads = get("num_attention_heads", int)
    kv_heads = get("num_key_value_heads", int, default=heads)
    head_dim = get("head_dim", int, default=0, required=False) or 0
    if not head_dim:
        if hidden % heads:
            raise CheckpointError(
                f"{source}: hidden_size {hidden} not divisible by num_attention_heads {heads}"
            )
        head_dim = hidden // heads
    if heads % kv_heads:
        raise CheckpointError(
            f"{source}: num_attention_heads {heads} not divisible by num_key_value_heads {kv_heads}"
        )
    if head_dim % 2:
        raise CheckpointError(f"{source}: head_dim {head_dim} must be even for RoPE")
    dtype = raw.get("torch_dtype", raw.get("dtype", "float32")) or "float32"
    if dtype not in SUPPORTED_DTYPES:
        raise CheckpointError(
            f"{source}: unsupported torch_dtype {dtype!r} (supported: {', '.join(SUPPORTED_DTYPES)})"
        )
    act = raw.get("hidden_act", "silu")
    if act != "silu":
        raise CheckpointError(f"{source}: unsupported hidden_act {act!r} (only 'silu')")
    if raw.get("mlp_bias"):
        raise CheckpointError(f"{source}: mlp_bias=true is not supported")
    if raw.get("use_sliding_window"):
        raise CheckpointError(f"{source}: use_sliding_window=true is not supported")
    scaling = raw.get("rope_scaling")
    if scaling is not None:
        if not isinstance(scaling, dict):
            raise CheckpointError(f"{source}: rope_scaling must be an object or null")
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind not in ("default", "linear", "llama3"):
            raise CheckpointError(f"{source}: unsupported rope_scaling type {kind!r}")
        scaling = tuple(
            sorted((k, v) for k, v in scaling.items() if not isinstance(v, list | dict))
        )
    is_qwen = arch == "Qwen2ForCausalLM"
    attention_bias = bool(raw.get("attention_bias", False))
    return ModelConfig(
        architecture=arch,
        hidden_size=hidden,
        num_layers=get("num_hidden_layers", int),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=get("intermediate_size", int),
        vocab_size=get("vocab_size", int),
        rms_norm_eps=get("rms_norm_eps", float, default=1e-6),
        rope_theta=get("rope_theta", float, default=10000.0),
        rope_scaling=scaling,
        max_position_embeddings=get("max_position_embeddings", int, default=2048),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        dtype=dtype,
        qkv_bias=True if is_qwen else attention_bias,
        o_bias=False if is_qwen else attention_bias,
        eos_token_id=_first_id(raw.get("eos_token_id")),
        bos_token_id=_first_id(raw.get("bos_token_id")),
    )


def load_config(model_dir: str) -> ModelConfig:
    """Read and validate `model_dir/config.json`."""
    path = os.path.join(model_dir, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError as e:
        raise CheckpointError(f"{model_dir}: no config.json") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"config.json: not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise CheckpointError("config.json: not a JSON object")
    return parse_config(raw)


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
    """RoPE inverse frequencies [head_dim/2] in float64, with HF linear / llama3 scaling."""
    d = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
    if cfg.rope_scaling is None:
        return inv
    s = dict(cfg.rope_scaling)
    kind = s.get("rope_type", s.get("type"))
    factor = float(s.get("factor", 1.0))
    if kind == "linear":
        return inv / factor
    if kind == "llama3":
        low = float(s.get("low_freq_factor", 1.0))
        high = float(s.get("high_freq_factor", 4.0))
        old_len = float(s.get("original_max_position_embeddings", 8192))
        wavelen = 2 * math.pi / inv
        smooth = (old_len / wavelen - low) / (high - low)
        scaled = np.where(wavelen > old_len / low, inv / factor, inv)
        mid = (wavelen <= old_len / low) & (wavelen >= old_len / high)
        return np.where(mid, (1 - smooth) * inv / factor + smooth * inv, scaled)
    return inv


def rope_cos_sin(cfg: ModelConfig, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HF-convention cos/sin [len(positions), head_dim] (frequencies repeated twice), float32."""
    freqs = np.outer(positions.astype(np.float64), rope_inv_freq(cfg))
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32)


def model_info(model_dir: str, cfg: ModelConfig) -> ModelInfo:
    """The engine-facing summary of a loaded config; the name is the directory's basename."""
    return ModelInfo(
        name=os.path.basename(os.path.normpath(model_dir)),
        architecture=cfg.architecture,
        vocab_size=cfg.vocab_size,
        max_model_len=cfg.max_position_embeddings,
        eos_token_id=cfg.eos_token_id,
        num_layers=cfg.num_layers,
        num_kv_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        dtype=cfg.dtype,
    )
