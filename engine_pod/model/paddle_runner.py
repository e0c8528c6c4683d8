"""`PaddleModelRunner`: the real model runner (Llama / Qwen2 decoder in PaddlePaddle)."""

from __future__ import annotations

from dataclasses import dataclass

import paddle

from engine_pod.model.base import SeqWork
from engine_pod.model.hf_config import model_info
from engine_pod.model.llama import DecoderWeights, PagedDecoder, PagedKVCache, build_weights
from engine_pod.model.loader import load_checkpoint, load_update
from engine_pod.model.ops import get_ops
from engine_pod.model.sampler import sample
from engine_pod.model.step_plan import plan_step
from engine_pod.model.tiny import ensure_tiny_model
from engine_pod.model.tokenizer import load_tokenizer


@dataclass
class PreparedWeights:
    """Validated weights, already on the device, not yet serving."""

    path: str
    weights: DecoderWeights


class PaddleModelRunner:
    """ModelRunner over a HF-layout dir (`None` → the tiny model for `seed`).

    `device` is passed to `paddle.set_device` ("cpu", "gpu", "gpu:1"...). Compute dtype:
    float32 on CPU, the checkpoint's dtype elsewhere (override with `dtype`). The
    decoder's non-GEMM ops come from `engine_pod.model.ops.get_ops(device)`: Paddle's own
    on the CPU, our CUDA kernels on a GPU (`RLFLEET_OPS=native|cuda` overrides).
    """

    def __init__(
        self,
        model_dir: str | None = None,
        device: str = "cpu",
        seed: int = 0,
        dtype: str | None = None,
    ) -> None:
        self.model_dir = model_dir or ensure_tiny_model(seed=seed)
        paddle.set_device(device.replace("cuda", "gpu"))
        self.device = device
        self.ops = get_ops(device.replace("cuda", "gpu"))
        cfg, np_weights = load_checkpoint(self.model_dir)
        self.config = cfg
        self.dtype = dtype or ("float32" if device == "cpu" else cfg.dtype)
        self.info = model_info(self.model_dir, cfg)
        self.tokenizer = load_tokenizer(self.model_dir, cfg.eos_token_id)
        self.weights = build_weights(cfg, np_weights, self.dtype, self.ops)
        self.weights_path = self.model_dir
        self.decoder = PagedDecoder(cfg, self.dtype, self.ops)
        self.cache: PagedKVCache | None = None

    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> None:
        self.cache = None  # free the old one first
        self.cache = PagedKVCache(self.config, num_blocks, block_size, self.dtype, self.ops)

    def execute(self, batch: list[SeqWork]) -> dict[str, int]:
        if self.cache is None:
            raise RuntimeError("allocate_kv_cache() must be called before execute()")
        if not batch:
            return {}
        plan = plan_step(
            batch,
            self.cache.block_size,
            self.cache.num_blocks,
            self.config.vocab_size,
            self.config.max_position_embeddings,
        )
        logits = self.decoder.forward_logits(self.weights, self.cache, plan)
        if logits is None:
            return {}
        params = [w.sampling for w in plan.sample_items]
        if self.ops.device_greedy and all(p.greedy or p.top_k == 1 for p in params):
            tokens = self.ops.greedy(logits)  # argmax on the device; only ids come back
        else:
            tokens = sample(
                self.ops.logits_to_numpy(logits),
                params,
                [w.num_generated for w in plan.sample_items],
            )
        return {w.request_id: t for w, t in zip(plan.sample_items, tokens, strict=True)}

    def prepare_weights(self, path: str) -> PreparedWeights:
        np_weights = load_update(self.config, path)
        return PreparedWeights(path, build_weights(self.config, np_weights, self.dtype, self.ops))

    def swap_weights(self, prepared: object) -> None:
        if not isinstance(prepared, PreparedWeights):
            raise TypeError("swap_weights expects the result of prepare_weights")
        self.weights = prepared.weights
        self.weights_path = prepared.path
