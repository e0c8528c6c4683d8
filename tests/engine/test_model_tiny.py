"""The embedded tiny model, its tokenizer, and the synthetic (Paddle-free) runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine_pod.model.base import CheckpointError, SeqWork
from engine_pod.model.random_model import make_random_model
from engine_pod.model.synthetic import SyntheticModelRunner
from engine_pod.model.tiny import ensure_tiny_model
from engine_pod.model.tokenizer import load_tokenizer

FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a = Path(ensure_tiny_model(str(tmp_path / "a"), seed=3))
    b = Path(ensure_tiny_model(str(tmp_path / "b"), seed=3))
    c = Path(ensure_tiny_model(str(tmp_path / "c"), seed=4))
    for f in FILES:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()
    assert (a / "config.json").read_bytes() == (c / "config.json").read_bytes()
    cfg = json.loads((a / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen2ForCausalLM"] and cfg["torch_dtype"] == "float32"


def test_default_location_and_reuse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLFLEET_CACHE", str(tmp_path))
    d = Path(ensure_tiny_model(seed=2))
    assert d == tmp_path / "models" / "tiny-qwen2-seed2"
    mtime = (d / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_model(seed=2) == str(d)
    assert (d / "model.safetensors").stat().st_mtime_ns == mtime  # not regenerated
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".tmp")]


def test_cli_writes_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "step-1"
    subprocess.run(
        [sys.executable, "-m", "engine_pod.model.tiny", "--out", str(out), "--seed", "1"],
        check=True,
        capture_output=True,
    )
    ref = Path(ensure_tiny_model(str(tmp_path / "ref"), seed=1))
    for f in FILES:
        assert (out / f).read_bytes() == (ref / f).read_bytes(), f


def test_tokenizer_round_trip(tmp_path: Path) -> None:
    tok = load_tokenizer(ensure_tiny_model(str(tmp_path / "t")))
    text = "Grüße, 世界! 🎉\t\n  x\x00 ∑ é" + "".join(chr(c) for c in range(0x370, 0x380))
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode("A") == [65]
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    ids = tok.encode(chat)
    assert ids[0] == tok.token_to_id("<|im_start|>") and tok.eos_token_id == 256
    assert tok.decode(ids) == "user\nhi\nassistant\n"  # special tokens skipped
    assert tok.decode(ids, skip_special_tokens=False) == chat


def test_synthetic_runner(tmp_path: Path) -> None:
    code = (
        "import sys; from engine_pod.model.synthetic import SyntheticModelRunner as S;"
        f"S({str(ensure_tiny_model(str(tmp_path / 'a')))!r}); print('paddle' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # the light replica never imports Paddle

    r = SyntheticModelRunner(str(tmp_path / "a"))
    assert r.info.architecture == "Qwen2ForCausalLM" and r.info.vocab_size == 259
    r.allocate_kv_cache(16, 4)
    batch = [SeqWork("p", [1, 2, 3, 4, 5], 0, [3, 7], True), SeqWork("d", [9], 4, [1, 2], True)]
    first = r.execute(batch)
    assert set(first) == {"p", "d"} and first == r.execute(batch)
    assert all(0 <= t < 259 and t != r.info.eos_token_id for t in first.values())
    assert r.execute([SeqWork("q", [1, 2], 0, [0], False)]) == {}
    with pytest.raises(ValueError, match="block table"):
        r.execute([SeqWork("x", [1] * 9, 0, [0, 1], True)])

    # a bad checkpoint is rejected like the real loader would; serving state unchanged
    bad = Path(make_random_model(str(tmp_path / "bad"), 64, 2, 4, 2, 96))
    with pytest.raises(CheckpointError, match="intermediate_size 128 -> 96"):
        r.prepare_weights(str(bad))
    assert r.execute(batch) == first
    # new weights, same shapes → different fake tokens
    r.swap_weights(r.prepare_weights(ensure_tiny_model(str(tmp_path / "b"), seed=1)))
    assert r.execute(batch) != first


def test_concurrent_generation_is_safe(tmp_path: Path) -> None:
    code = "from engine_pod.model.tiny import ensure_tiny_model as e; print(e(seed=9))"
    env = {**os.environ, "RLFLEET_CACHE": str(tmp_path)}
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(3)
    ]
    outs = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert outs == {str(tmp_path / "models" / "tiny-qwen2-seed9")}
    ref = Path(ensure_tiny_model(str(tmp_path / "ref"), seed=9))
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["tiny-qwen2-seed9"]
    got = tmp_path / "models" / "tiny-qwen2-seed9" / "model.safetensors"
    assert got.read_bytes() == (ref / "model.safetensors").read_bytes()
