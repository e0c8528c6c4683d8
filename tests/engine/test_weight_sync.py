"""The one-pass weight load: same values and digest as reading and hashing separately,
q/k/v and gate/up fused without copies, CPU tensors over the loaded memory, defects refused."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest

from engine_pod.model.base import CheckpointError
from engine_pod.model.digest import file_sha256, verify_checkpoint
from engine_pod.model.hf_config import load_config
from engine_pod.model.llama import build_weights
from engine_pod.model.loader import (
    check_checkpoint,
    fused_groups,
    load_checkpoint,
    load_update,
    read_checked,
    recording_loads,
)
from engine_pod.model.random_model import make_random_model
from engine_pod.model.safetensors_io import (
    BackgroundHasher,
    read_file_into,
    read_header,
    read_tensor,
    to_float32,
    write_safetensors,
)
from engine_pod.model.tiny import ensure_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return Path(ensure_tiny_model(str(tmp_path_factory.mktemp("m") / "tiny"), seed=3))


def separately_read(model_dir: Path) -> dict[str, np.ndarray]:
    """Every tensor read on its own, the plain way (the oracle for the one-pass load)."""
    out = {}
    for st in sorted(model_dir.glob("*.safetensors")):
        for name, info in read_header(str(st)).items():
            out[name] = to_float32(read_tensor(info), info.dtype)
    return out


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_one_pass_load_equals_separate_reads(tmp_path: Path, dtype: str) -> None:
    d = Path(make_random_model(str(tmp_path / dtype), 32, 2, 4, 2, 64, dtype=dtype, seed=5))
    cfg, w = load_checkpoint(str(d))
    want = separately_read(d)
    assert set(w) == set(want)
    for name, a in w.items():
        assert a.dtype == np.float32 and a.shape == want[name].shape
        np.testing.assert_array_equal(a, want[name], err_msg=name)
    for group in fused_groups(cfg):  # laid out as consecutive rows of one array
        whole = w[group[0]].base
        assert all(w[n].base is whole for n in group)
        np.testing.assert_array_equal(whole, np.concatenate([want[n] for n in group]))


def test_loader_hashes_equal_sha256_and_digest_is_unchanged(tiny: Path) -> None:
    cfg = load_config(str(tiny))
    with recording_loads() as rec:
        load_update(cfg, str(tiny))
    st = str((tiny / "model.safetensors").resolve())
    assert rec.file_sha256 == {st: file_sha256(st)}
    assert rec.read_s > 0 and rec.hash_s > 0
    one_pass = verify_checkpoint(str(tiny), known=rec.file_sha256)
    assert one_pass == verify_checkpoint(str(tiny))
    cli = subprocess.run(
        [sys.executable, "-m", "engine_pod.model.digest", str(tiny)],
        capture_output=True,
        text=True,
        check=True,
    )
    shell = subprocess.run(
        "sha256sum $(ls config.json *.safetensors | LC_ALL=C sort) | sha256sum",
        shell=True,
        cwd=tiny,
        capture_output=True,
        text=True,
        check=True,
    )
    assert cli.stdout.strip() == one_pass == shell.stdout.split()[0]


def test_no_hashing_outside_recording(tiny: Path) -> None:
    with recording_loads() as rec:
        pass
    load_checkpoint(str(tiny))
    assert rec.file_sha256 == {} and rec.read_s == 0


def test_skipped_tensors_and_trailing_bytes_are_hashed(tiny: Path, tmp_path: Path) -> None:
    """A tolerated tensor the model does not use and bytes after the last tensor: not
    loaded, yet part of the file's sha256."""
    d = tmp_path / "extra"
    shutil.copytree(tiny, d)
    st = d / "model.safetensors"
    tensors = {n: (t.dtype, read_tensor(t).copy()) for n, t in read_header(str(st)).items()}
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = ("F32", np.arange(8, dtype="f4"))
    write_safetensors(str(st), tensors)
    with open(st, "ab") as f:
        f.write(b"trailing bytes")
    cfg = load_config(str(d))
    with recording_loads() as rec:
        w = load_update(cfg, str(d))
    assert rec.file_sha256[str(st.resolve())] == hashlib.sha256(st.read_bytes()).hexdigest()
    assert "model.layers.0.self_attn.rotary_emb.inv_freq" not in w
    np.testing.assert_array_equal(w["model.norm.weight"], tensors["model.norm.weight"][1])


def test_gap_between_tensors_is_hashed(tmp_path: Path) -> None:
    a, b = np.arange(4, dtype="f4"), np.arange(4, 10, dtype="f4")
    header = {
        "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
        "b": {"dtype": "F32", "shape": [6], "data_offsets": [24, 48]},  # 8 bytes of gap
    }
    hb = json.dumps(header).encode()
    data = struct.pack("<Q", len(hb)) + hb + a.tobytes() + b"\x07" * 8 + b.tobytes()
    path = tmp_path / "gap.safetensors"
    path.write_bytes(data)
    infos = read_header(str(path))
    dests = {"a": np.empty(4, np.float32), "b": np.empty(6, np.float32)}
    hasher = BackgroundHasher()
    try:
        sha = read_file_into(str(path), infos, dests, hasher)
    finally:
        hasher.close()
    assert sha == hashlib.sha256(data).hexdigest()
    np.testing.assert_array_equal(dests["a"], a)
    np.testing.assert_array_equal(dests["b"], b)


def test_overlapping_tensors_are_refused(tmp_path: Path) -> None:
    header = {
        "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]},
    }
    hb = json.dumps(header).encode()
    path = tmp_path / "overlap.safetensors"
    path.write_bytes(struct.pack("<Q", len(hb)) + hb + bytes(16))
    with pytest.raises(CheckpointError, match="overlaps"):
        read_file_into(str(path), read_header(str(path)), {})


def test_file_changed_after_validation_is_refused(tiny: Path, tmp_path: Path) -> None:
    d = tmp_path / "changing"
    shutil.copytree(tiny, d)
    checked = check_checkpoint(str(d))
    st = d / "model.safetensors"
    data = st.read_bytes()
    st.write_bytes(data[:-100])  # truncated between the header check and the read
    with pytest.raises(CheckpointError, match="truncated"):
        read_checked(checked)
    tensors = {
        n: (t.dtype, read_tensor(t).copy()) for n, t in read_header(str(tiny / st.name)).items()
    }
    tensors["model.norm.weight"] = ("F32", np.ones(64, np.float32))
    del tensors["lm_head.weight"]
    write_safetensors(str(st), tensors)  # another layout altogether
    with pytest.raises(CheckpointError, match="changed while being loaded"):
        read_checked(checked)


def test_build_weights_fuses_and_shares_memory_on_cpu(tiny: Path) -> None:
    paddle.set_device("cpu")
    cfg, w = load_checkpoint(str(tiny))
    want = separately_read(tiny)
    qkv = [f"model.layers.0.self_attn.{x}_proj.weight" for x in "qkv"]
    fused = w[qkv[0]].base
    dw = build_weights(cfg, w, "float32")
    assert dw.layers[0].qkv.data_ptr() == fused.ctypes.data  # no copy
    np.testing.assert_array_equal(dw.layers[0].qkv.numpy(), np.concatenate([want[n] for n in qkv]))
    gate_up = ["model.layers.1.mlp.gate_proj.weight", "model.layers.1.mlp.up_proj.weight"]
    np.testing.assert_array_equal(
        dw.layers[1].gate_up.numpy(), np.concatenate([want[n] for n in gate_up])
    )
    # separate arrays (any other caller): concatenated copies, same values
    plain = {n: a.copy() for n, a in w.items()}
    dw2 = build_weights(cfg, plain, "float32")
    np.testing.assert_array_equal(dw2.layers[0].qkv.numpy(), dw.layers[0].qkv.numpy())
    assert dw2.layers[0].qkv.data_ptr() != plain[qkv[0]].ctypes.data
    # the tensors keep their memory alive once the arrays are gone
    del w, fused, plain
    np.testing.assert_array_equal(dw.embed.numpy(), want["model.embed_tokens.weight"])
