"""update_weights: paused only, validated, atomic (a bad checkpoint leaves the old weights serving)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine_pod.model.digest import verify_checkpoint, write_manifest
from engine_pod.model.hf_config import load_config
from engine_pod.model.reference import reference_greedy
from engine_pod.model.safetensors_io import read_header, read_tensor, to_float32
from engine_pod.model.tiny import ensure_tiny_model
from engine_pod.model.tokenizer import load_tokenizer
from tests.engine.conftest import complete, control

PROMPT = "weights decide what comes next"


def greedy(pod) -> list[int]:
    r = complete(pod, PROMPT, max_tokens=16, ignore_eos=True)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["token_ids"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    base = Path(ensure_tiny_model())
    new = root / "step-1"
    subprocess.run(
        [sys.executable, "-m", "engine_pod.model.tiny", "--out", str(new), "--seed", "1"],
        check=True,
    )
    corrupt = root / "corrupt"
    shutil.copytree(base, corrupt)
    st = next(corrupt.glob("*.safetensors"))
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    bad_json = root / "bad-json"
    shutil.copytree(base, bad_json)
    (bad_json / "config.json").write_text("{ not json")
    # valid headers, one data byte flipped after its manifest was written: only the
    # sha256 of the bytes loaded can tell
    flipped = root / "flipped"
    shutil.copytree(base, flipped)
    write_manifest(str(flipped))
    st = flipped / "model.safetensors"
    data = bytearray(st.read_bytes())
    data[-5] ^= 0x40
    st.write_bytes(bytes(data))
    return {
        "base": base,
        "new": new,
        "corrupt": corrupt,
        "bad_json": bad_json,
        "flipped": flipped,
        "missing": root / "nope",
    }


def test_update_while_running_is_409(running, checkpoints):
    r = control(running, "/v1/update_weights", {"path": str(checkpoints["new"]), "version": "x"})
    assert r.status_code == 409 and "paused" in r.json()["error"]["message"]


@pytest.mark.parametrize("name", ["corrupt", "bad_json", "flipped", "missing"])
def test_bad_checkpoint_is_400_and_old_weights_keep_serving(running, checkpoints, name):
    before = greedy(running)
    version = control(running, "/v1/is_paused", method="GET").json()["weights_version"]
    control(running, "/v1/pause").raise_for_status()
    r = control(running, "/v1/update_weights", {"path": str(checkpoints[name]), "version": "bad"})
    assert r.status_code == 400, r.text
    assert "old weights kept" in r.json()["error"]["message"]
    assert control(running, "/v1/is_paused", method="GET").json()["weights_version"] == version
    control(running, "/v1/resume").raise_for_status()
    assert greedy(running) == before


def test_mismatched_architecture_is_refused(running, tmp_path):
    from engine_pod.model.random_model import make_random_model

    other = tmp_path / "wider"
    make_random_model(
        str(other), hidden=96, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=300, seed=3
    )
    control(running, "/v1/pause").raise_for_status()
    r = control(running, "/v1/update_weights", {"path": str(other), "version": "wider"})
    assert r.status_code == 400


def test_good_checkpoint_changes_outputs_and_version(running, checkpoints):
    before = greedy(running)
    control(running, "/v1/pause").raise_for_status()
    r = control(
        running, "/v1/update_weights", {"path": str(checkpoints["new"]), "version": "step-1"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["weights_version"] == "step-1"
    st = control(running, "/v1/is_paused", method="GET").json()
    assert st["is_paused"] is True and st["weights_version"] == "step-1"
    control(running, "/v1/resume").raise_for_status()
    after = greedy(running)
    assert after != before
    # back to the base weights: the original outputs return exactly
    control(running, "/v1/pause").raise_for_status()
    control(
        running, "/v1/update_weights", {"path": str(checkpoints["base"]), "version": "base"}
    ).raise_for_status()
    control(running, "/v1/resume").raise_for_status()
    assert greedy(running) == before


def test_wrong_digest_is_400_and_old_weights_keep_serving(running, checkpoints):
    before = greedy(running)
    control(running, "/v1/pause").raise_for_status()
    body = {
        "path": str(checkpoints["new"]),
        "version": "bad",
        "digest": verify_checkpoint(str(checkpoints["base"])),
    }
    r = control(running, "/v1/update_weights", body)
    assert r.status_code == 400 and "digest mismatch" in r.json()["error"]["message"], r.text
    control(running, "/v1/resume").raise_for_status()
    assert greedy(running) == before


def test_update_reports_phases_digest_and_serves_the_new_checkpoint(running, checkpoints):
    """The answer's phases and digest (= `python -m engine_pod.model.digest DIR`), and the
    greedy output after the update = the reference forward over the checkpoint's tensors."""
    new = str(checkpoints["new"])
    cli = subprocess.run(
        [sys.executable, "-m", "engine_pod.model.digest", new],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    control(running, "/v1/pause").raise_for_status()
    try:
        r = control(running, "/v1/update_weights", {"path": new, "version": "step-1"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["weights_digest"] == cli
        assert control(running, "/v1/is_paused", method="GET").json()["weights_digest"] == cli
        phases = body["phases"]
        assert set(phases) == {"verify_s", "read_s", "hash_s", "build_s", "swap_s"}
        assert all(v >= 0 for v in phases.values())
        control(running, "/v1/resume").raise_for_status()
        ids = load_tokenizer(new).encode(PROMPT)
        r = complete(running, ids, max_tokens=16, ignore_eos=True)
        assert r.status_code == 200, r.text
        # the oracle's weights read tensor by tensor, not through the one-pass loader
        weights = {
            n: to_float32(read_tensor(t), t.dtype)
            for n, t in read_header(str(checkpoints["new"] / "model.safetensors")).items()
        }
        want = reference_greedy((load_config(new), weights), ids, 16)
        assert r.json()["choices"][0]["token_ids"] == want
    finally:
        control(running, "/v1/pause").raise_for_status()
        control(
            running, "/v1/update_weights", {"path": str(checkpoints["base"]), "version": "base"}
        ).raise_for_status()
        control(running, "/v1/resume").raise_for_status()


@pytest.mark.parametrize("runner", ["synthetic", "paddle"])
def test_start_weights_are_checked_against_the_pools_digest(checkpoints, tmp_path, runner):
    """A replica (re)started with the pool's weights and digest starts only on those exact bytes."""
    import httpx

    from engine_pod.launcher import EnginePod
    from engine_pod.model.digest import verify_checkpoint

    ckpt = str(checkpoints["new"])
    digest = verify_checkpoint(ckpt)
    common = ("--runner", runner, "--start-paused", "--weights-path", ckpt)
    with EnginePod(*common, "--weights-digest", digest, log_path=tmp_path / "ok.log") as pod:
        state = httpx.get(pod.url + "/v1/is_paused", timeout=5).json()
        assert (state["weights_digest"], state["weights_path"]) == (digest, ckpt)
        assert state["weights_version"] == "step-1" and state["is_paused"] is True
    # The wrong digest: the engine never comes up; liveness says why (the kubelet restarts it).
    bad = EnginePod(*common, "--weights-digest", "0" * 64, log_path=tmp_path / "bad.log").start()
    try:
        for _ in range(600):
            try:
                r = httpx.get(bad.url + "/health", timeout=2)
            except httpx.HTTPError:
                r = None
            if r is not None and "digest mismatch" in r.text:
                break
            time.sleep(0.05)
        assert r is not None and r.status_code == 503, r
        assert r.json()["error"]["type"] == "engine_unavailable"
        assert httpx.get(bad.url + "/ready", timeout=2).status_code == 503
    finally:
        bad.stop()
