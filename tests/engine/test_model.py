"""The paged Paddle runner equals the full-recompute reference, token for token."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine_pod.model.base import CheckpointError, SeqWork
from engine_pod.model.drive import run_paged
from engine_pod.model.loader import load_checkpoint
from engine_pod.model.paddle_runner import PaddleModelRunner
from engine_pod.model.random_model import make_random_model
from engine_pod.model.reference import reference_greedy
from engine_pod.model.tiny import ensure_tiny_model

N_NEW = 32


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    return ensure_tiny_model(str(tmp_path_factory.mktemp("m") / "tiny"), seed=0)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> str:
    """Llama: no biases, multi-query (1 kv head), head_dim != hidden/heads, tied embeddings."""
    out = str(tmp_path_factory.mktemp("m") / "llama")
    return make_random_model(
        out, 48, 2, 4, 1, 96, architecture="LlamaForCausalLM", seed=3, head_dim=16,
        tie_word_embeddings=True,
    )  # fmt: skip


@pytest.fixture(scope="module")
def runner(tiny_dir: str) -> PaddleModelRunner:
    return PaddleModelRunner(tiny_dir)


def prompts_for(runner: PaddleModelRunner) -> list[list[int]]:
    texts = ["Hello", "The quick brown fox jumps", "a", "Paged attention, 分页注意力!"]
    return [runner.tokenizer.encode(t) for t in texts]


def test_single_sequence_matches_reference(runner: PaddleModelRunner, tiny_dir: str) -> None:
    prompt = runner.tokenizer.encode("Hello world, this is")
    assert run_paged(runner, [prompt]) == [reference_greedy(tiny_dir, prompt, N_NEW)]


def test_chunked_prefill_and_mixed_batch_match_reference(
    runner: PaddleModelRunner, tiny_dir: str
) -> None:
    weights = load_checkpoint(tiny_dir)
    prompts = prompts_for(runner)
    expected = [reference_greedy(weights, p, N_NEW) for p in prompts]
    # chunks of 3 prompt tokens; sequences arrive 2 steps apart → prefill + decode mixed
    assert run_paged(runner, prompts, chunk=3, stagger=2) == expected
    # all at once, whole-prompt prefill, another block layout
    assert run_paged(runner, prompts, rng_seed=1) == expected


def test_llama_architecture_matches_reference(llama_dir: str) -> None:
    runner = PaddleModelRunner(llama_dir)
    assert runner.info.architecture == "LlamaForCausalLM"
    weights = load_checkpoint(llama_dir)
    prompts = prompts_for(runner)
    got = run_paged(runner, prompts, n_new=24, block_size=4, chunk=5, stagger=1)
    assert got == [reference_greedy(weights, p, 24) for p in prompts]


def test_non_degenerate_greedy(runner: PaddleModelRunner) -> None:
    out = run_paged(runner, prompts_for(runner))
    assert all(len(set(o)) >= 4 for o in out), out


def test_info_and_tokenizer(runner: PaddleModelRunner) -> None:
    info = runner.info
    assert (info.architecture, info.num_layers, info.num_kv_heads, info.head_dim) == (
        "Qwen2ForCausalLM", 2, 2, 16,
    )  # fmt: skip
    assert info.eos_token_id == runner.tokenizer.eos_token_id == 256
    assert runner.tokenizer.decode(runner.tokenizer.encode("héllo")) == "héllo"


def test_prefill_without_sample_returns_nothing(runner: PaddleModelRunner) -> None:
    runner.allocate_kv_cache(8, 4)
    assert runner.execute([SeqWork("x", [1, 2, 3], 0, [5], False)]) == {}
    assert runner.execute([]) == {}


def test_bad_batches_rejected(runner: PaddleModelRunner) -> None:
    runner.allocate_kv_cache(8, 4)
    with pytest.raises(ValueError, match="block table"):
        runner.execute([SeqWork("x", [1, 2, 3, 4, 5], 0, [1], True)])
    with pytest.raises(ValueError, match="out of range"):
        runner.execute([SeqWork("x", [1], 0, [8], True)])
    with pytest.raises(ValueError, match="vocabulary"):
        runner.execute([SeqWork("x", [100000], 0, [1], True)])


def test_weight_swap(tiny_dir: str, tmp_path: Path) -> None:
    runner = PaddleModelRunner(tiny_dir)
    prompt = runner.tokenizer.encode("weights decide")
    before = run_paged(runner, [prompt], n_new=12)
    # a broken checkpoint: prepare fails, serving weights untouched
    bad = Path(make_random_model(str(tmp_path / "bad"), 64, 2, 4, 2, 96, seed=1))
    with pytest.raises(CheckpointError, match="intermediate_size 128 -> 96"):
        runner.prepare_weights(str(bad))
    assert run_paged(runner, [prompt], n_new=12) == before
    # a new policy: same shapes, different seed → different greedy outputs
    new = ensure_tiny_model(str(tmp_path / "seed1"), seed=1)
    prepared = runner.prepare_weights(new)
    assert run_paged(runner, [prompt], n_new=12) == before  # prepared, not yet serving
    runner.swap_weights(prepared)
    after = run_paged(runner, [prompt], n_new=12)
    assert after != before
    assert after == [reference_greedy(new, prompt, 12)]


class _Deferred:
    """What a kernel library's `linear_deferred` may return: not a tensor (here, a wrapper)."""

    def __init__(self, t) -> None:
        self.t = t


def test_deferred_products_reach_only_the_norms(tiny_dir: str) -> None:
    """The decoder hands `linear_deferred`'s results only to `add_rms_norm` / `final_norm`
    (the GPU kernels pass unreduced split-K partials there): with ops whose deferred product
    is no tensor at all, decoding still equals the reference."""
    from engine_pod.model.ops import NativeOps

    class DeferringOps(NativeOps):
        calls = 0

        def linear_deferred(self, x, w, b=None):
            DeferringOps.calls += 1
            return _Deferred(self.linear(x, w, b))

        def add_rms_norm(self, x, delta, w, eps):
            assert isinstance(delta, _Deferred)
            return super().add_rms_norm(x, delta.t, w, eps)

        def final_norm(self, x, delta, w, st, eps):
            assert isinstance(delta, _Deferred)
            return super().final_norm(x, delta.t, w, st, eps)

    r = PaddleModelRunner(tiny_dir)
    r.ops = r.decoder.ops = DeferringOps()
    prompt = r.tokenizer.encode("Hello world, this is")
    assert run_paged(r, [prompt]) == [reference_greedy(tiny_dir, prompt, N_NEW)]
    assert DeferringOps.calls >= 2 * r.config.num_layers


def test_device_sampling_draws_through_logits_and_ids(tiny_dir: str) -> None:
    """With tokens drawn on the device, the runner gets each step's ids from one
    `logits_and_ids` call (a GPU kernel library draws them inside the LM head's GEMM), says
    it will not read the logits, and does not: ops whose logits are all NaN and whose ids
    are the float64 argmax still decode the reference tokens."""
    import numpy as np
    import paddle

    from engine_pod.model.ops import NativeOps

    class DrawingOps(NativeOps):
        device_sampling = True
        needs: list[bool] = []

        def logits_and_ids(self, rows, lm_head, st, need_logits=True):
            DrawingOps.needs.append(need_logits)
            lg = rows.numpy().astype(np.float64) @ lm_head.numpy().astype(np.float64).T
            nan = paddle.to_tensor(np.full(lg.shape, np.nan, dtype=np.float32))
            return nan, paddle.to_tensor(np.argmax(lg, axis=-1).astype(np.int64))

    r = PaddleModelRunner(tiny_dir)
    r.ops = r.decoder.ops = DrawingOps()
    r.device_sampling = True
    prompt = r.tokenizer.encode("Hello world, this is")
    assert run_paged(r, [prompt]) == [reference_greedy(tiny_dir, prompt, N_NEW)]
    assert len(DrawingOps.needs) >= N_NEW and not any(DrawingOps.needs)


def test_folded_norms_decode_the_reference_tokens(tiny_dir: str) -> None:
    """Layer norms folded into qkv / gate_up at weight load (ops/base.py "folded norms"; on
    the GPU, bf16 steps of more than 32 rows): the decoder runs each layer on the raw residual
    stream — the qkv and gate_up products scaled by 1 / rms of their row, o and down added
    into it — and still decodes the reference tokens (float32 here: the same math, other
    roundings). The loaded norm weights are ones, and every step took the folded path."""
    from engine_pod.model.llama import build_weights
    from engine_pod.model.ops import NativeOps

    class FoldingOps(NativeOps):
        fold_norms = True
        steps = 0

        def folded_layers(self, st, dtype):
            FoldingOps.steps += 1
            return True

    r = PaddleModelRunner(tiny_dir)
    ops = FoldingOps()
    r.ops = r.decoder.ops = ops
    r.weights = build_weights(r.config, load_checkpoint(tiny_dir)[1], r.dtype, ops)
    norms = [t.numpy() for lw in r.weights.layers for t in (lw.input_norm, lw.post_norm)]
    assert all((n == 1).all() for n in norms)
    prompts = [r.tokenizer.encode(t) for t in ["Hello world, this is", "a"]]
    assert run_paged(r, prompts) == [reference_greedy(tiny_dir, p, N_NEW) for p in prompts]
    assert FoldingOps.steps > 0


def test_mlp_goes_through_linear_silu(tiny_dir: str) -> None:
    """The decoder runs each layer's gate_up projection and SiLU * mul through one
    `linear_silu` call (a GPU kernel library does both in one kernel): ops that count the
    calls and compute it their own way (here, the two ops in float64) still decode the
    reference tokens."""
    import numpy as np
    import paddle

    from engine_pod.model.ops import NativeOps

    class CountingOps(NativeOps):
        calls = 0

        def linear_silu(self, x, gate_up):
            CountingOps.calls += 1
            g_u = x.numpy().astype(np.float64) @ gate_up.numpy().astype(np.float64).T
            g, u = np.split(g_u, 2, axis=-1)
            return paddle.to_tensor((g / (1 + np.exp(-g)) * u).astype(np.float32))

    r = PaddleModelRunner(tiny_dir)
    r.ops = r.decoder.ops = CountingOps()
    prompt = r.tokenizer.encode("Hello world, this is")
    assert run_paged(r, [prompt]) == [reference_greedy(tiny_dir, prompt, N_NEW)]
    assert CountingOps.calls >= r.config.num_layers
