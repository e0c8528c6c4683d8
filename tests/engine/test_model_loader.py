"""Checkpoint loading and validation: every defect is a CheckpointError naming the problem."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from engine_pod.model.base import CheckpointError
from engine_pod.model.loader import (
    check_checkpoint,
    expected_tensors,
    load_checkpoint,
    validate_update,
)
from engine_pod.model.random_model import make_random_model
from engine_pod.model.safetensors_io import read_header, read_tensor, write_safetensors
from engine_pod.model.synthetic import SyntheticModelRunner
from engine_pod.model.tiny import ensure_tiny_model

Tensors = dict[str, tuple[str, np.ndarray]]


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return Path(ensure_tiny_model(str(tmp_path_factory.mktemp("m") / "tiny"), seed=0))


def copy_with(good: Path, tmp: Path, edit: Callable[[Tensors], None] | None = None) -> Path:
    """Copy the good checkpoint, optionally rewriting its tensors through `edit`."""
    out = tmp / "ckpt"
    shutil.copytree(good, out)
    if edit is not None:
        st = out / "model.safetensors"
        tensors = {n: (t.dtype, read_tensor(t).copy()) for n, t in read_header(str(st)).items()}
        edit(tensors)
        write_safetensors(str(st), tensors)
    return out


def edit_config(path: Path, **changes: object) -> None:
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def assert_rejected(path: Path, match: str) -> None:
    """Both the real loader and the header-only synthetic runner reject it with the same message."""
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(str(path))
    with pytest.raises(CheckpointError, match=match):
        SyntheticModelRunner(str(path))


def test_good_checkpoint_loads(good: Path) -> None:
    cfg, w = load_checkpoint(str(good))
    assert cfg.architecture == "Qwen2ForCausalLM" and cfg.qkv_bias and not cfg.tie_word_embeddings
    assert set(w) == set(expected_tensors(cfg))
    assert w["model.layers.1.self_attn.k_proj.weight"].shape == (32, 64)
    assert all(a.dtype == np.float32 for a in w.values())


def test_missing_tensor(good: Path, tmp_path: Path) -> None:
    path = copy_with(good, tmp_path, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    assert_rejected(path, r"missing tensor\(s\) model\.layers\.1\.mlp\.up_proj\.weight")


def test_unexpected_tensor(good: Path, tmp_path: Path) -> None:
    def add(t: Tensors) -> None:
        t["model.layers.0.extra.weight"] = ("F32", np.zeros(3, np.float32))

    assert_rejected(
        copy_with(good, tmp_path, add), r"unexpected tensor\(s\) model\.layers\.0\.extra"
    )


def test_wrong_shape(good: Path, tmp_path: Path) -> None:
    def shrink(t: Tensors) -> None:
        t["model.norm.weight"] = ("F32", np.ones(63, np.float32))

    assert_rejected(
        copy_with(good, tmp_path, shrink),
        r"'model\.norm\.weight' has shape \[63\], expected \[64\]",
    )


def test_wrong_dtype(good: Path, tmp_path: Path) -> None:
    def half(t: Tensors) -> None:
        t["lm_head.weight"] = ("F16", t["lm_head.weight"][1].astype(np.float16))

    assert_rejected(
        copy_with(good, tmp_path, half), r"'lm_head\.weight' has dtype F16, but .*float32"
    )


def test_wrong_architecture(good: Path, tmp_path: Path) -> None:
    path = copy_with(good, tmp_path)
    edit_config(path, architectures=["MistralForCausalLM"])
    assert_rejected(path, "unsupported architecture 'MistralForCausalLM'")
    # Llama config over Qwen2 tensors: the q/k/v biases are unexpected
    edit_config(path, architectures=["LlamaForCausalLM"])
    assert_rejected(path, r"unexpected tensor\(s\) .*q_proj\.bias")


def test_truncated_safetensors(good: Path, tmp_path: Path) -> None:
    path = copy_with(good, tmp_path)
    st = path / "model.safetensors"
    data = st.read_bytes()
    st.write_bytes(data[: len(data) - 100])
    assert_rejected(path, "model.safetensors: truncated file")
    st.write_bytes(data[:5])
    assert_rejected(path, "truncated safetensors file")
    st.write_bytes(b"\xff" * 64)
    assert_rejected(path, "corrupt safetensors header")


def test_bad_json(good: Path, tmp_path: Path) -> None:
    path = copy_with(good, tmp_path)
    (path / "config.json").write_text('{"architectures": [')
    assert_rejected(path, "config.json: not valid JSON")
    (path / "config.json").write_text("[1, 2]")
    assert_rejected(path, "config.json: not a JSON object")
    edit_config_path = path / "config.json"
    cfg = json.loads((good / "config.json").read_text())
    del cfg["hidden_size"]
    edit_config_path.write_text(json.dumps(cfg))
    assert_rejected(path, "config.json: missing key 'hidden_size'")


def test_missing_files(good: Path, tmp_path: Path) -> None:
    path = copy_with(good, tmp_path)
    (path / "model.safetensors").unlink()
    assert_rejected(path, r"no \*\.safetensors")
    with pytest.raises(CheckpointError, match="not a directory"):
        check_checkpoint(str(tmp_path / "nope"))


def test_validate_update(good: Path, tmp_path: Path) -> None:
    cfg, _ = load_checkpoint(str(good))
    other = ensure_tiny_model(str(tmp_path / "seed7"), seed=7)
    assert validate_update(cfg, other).config == cfg
    bigger = make_random_model(str(tmp_path / "big"), 64, 3, 4, 2, 128, seed=0)
    with pytest.raises(CheckpointError, match="num_layers 2 -> 3"):
        validate_update(cfg, bigger)


def test_half_precision_checkpoints(tmp_path: Path) -> None:
    f32 = make_random_model(str(tmp_path / "f32"), 32, 1, 2, 1, 64, seed=5)
    _, w32 = load_checkpoint(f32)
    for dtype, tol in (("float16", 1e-3), ("bfloat16", 8e-3)):
        d = make_random_model(str(tmp_path / dtype), 32, 1, 2, 1, 64, dtype=dtype, seed=5)
        cfg, w = load_checkpoint(d)
        assert cfg.dtype == dtype
        for name, a in w.items():
            assert a.dtype == np.float32
            np.testing.assert_allclose(a, w32[name], rtol=tol, atol=tol)
