"""`PaddleModelRunner`: the real model runner (Llama / Qwen2 decoder in PaddlePaddle)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
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

log = logging.getLogger(__name__)


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

    With the CUDA kernels: decode steps replay CUDA graphs (`cuda_graphs`, default on;
    engine_pod/model/cuda_graphs.py) for batches up to `max_graph_batch`, and tokens are
    drawn on the device (`device_sampling`, default on; `RLFLEET_SAMPLING=host` draws
    non-greedy rows with the numpy sampler instead). Both are off on the CPU path.
    """

    def __init__(
        self,
        model_dir: str | None = None,
        device: str = "cpu",
        seed: int = 0,
        dtype: str | None = None,
        cuda_graphs: bool | None = None,
        max_graph_batch: int = 128,
        device_sampling: bool | None = None,
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
        self.num_blocks = 0  # blocks the engine may address (the cache may hold a scratch one)
        if device_sampling is None:
            device_sampling = os.environ.get("RLFLEET_SAMPLING", "device") != "host"
        self.device_sampling = bool(device_sampling and self.ops.device_sampling)
        self.graphs = None
        if cuda_graphs is None or cuda_graphs:
            if self.ops.name == "cuda":
                from engine_pod.model.cuda_graphs import DecodeGraphs

                self.graphs = DecodeGraphs(self.ops, self.decoder, max_graph_batch,
                                           need_logits=not self.device_sampling)  # fmt: skip
            elif cuda_graphs:
                log.warning("CUDA graphs need the CUDA kernels (ops %s): off", self.ops.name)

    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> None:
        self.cache = None  # free the old one first
        if self.graphs is not None:
            self.graphs.invalidate()
        extra = 1 if self.graphs is not None else 0  # block num_blocks: graph padding rows
        self.cache = PagedKVCache(self.config, num_blocks + extra, block_size, self.dtype, self.ops)
        self.num_blocks = num_blocks
        if self.graphs is not None:
            self.graphs.attach(self.cache, scratch_block=num_blocks)

    def launch(
        self, batch: list[SeqWork], feed: bool = False
    ) -> Callable[[], dict[str, int]] | None:
        """A decode step that replays a CUDA graph, started: the replay is queued on the GPU
        and the returned function waits for its tokens (execute's answer). None for any
        other step (call `execute`). `feed`: a look-ahead step whose inputs are the tokens
        the last launch samples (base.py), copied on the device; only when the tokens are
        drawn on the device."""
        if self.graphs is None or self.cache is None or not batch:
            return None
        on_device = self.device_sampling or all(
            w.sampling.greedy or w.sampling.top_k == 1 for w in batch
        )
        if feed and not on_device:
            return None
        out = self.graphs.run(self.weights, batch, feed)
        if out is None:
            return None
        logits, ids, host = out
        if on_device:  # the ids come back through pinned memory: wait for this step only
            return lambda: {w.request_id: t for w, t in zip(batch, host.tokens(), strict=True)}
        return lambda: self._tokens(batch, logits, ids)

    def execute(self, batch: list[SeqWork]) -> dict[str, int]:
        if self.cache is None:
            raise RuntimeError("allocate_kv_cache() must be called before execute()")
        if not batch:
            return {}
        wait = self.launch(batch)  # decode steps: a graph replay
        if wait is not None:
            return wait()
        if self.graphs is not None:
            self.graphs.last = None  # an eager step: no look-ahead step may feed from a graph's
        plan = plan_step(
            batch,
            self.cache.block_size,
            self.num_blocks,
            self.config.vocab_size,
            self.config.max_position_embeddings,
            context_slots=self.ops.needs_context_slots,
        )
        st = self.ops.begin_step(self.config, plan, self.decoder.rope, self.cache.block_size)
        if self.device_sampling:
            out = self.decoder.forward_ids(self.weights, self.cache, plan, st, need_logits=False)
            if out is None:
                return {}
            return self._tokens(plan.sample_items, *out)
        logits = self.decoder.forward_logits(self.weights, self.cache, plan, st)
        if logits is None:
            return {}
        return self._tokens(plan.sample_items, logits, None)

    def _tokens(
        self, items: list[SeqWork], logits: paddle.Tensor, ids: paddle.Tensor | None
    ) -> dict[str, int]:
        """Each sampled item's next token: from `ids` (drawn on the device) when the device
        sampler is on or every row is greedy, else from the logits on the host."""
        params = [w.sampling for w in items]
        n = len(params)
        all_greedy = all(p.greedy or p.top_k == 1 for p in params)
        if ids is not None and (self.device_sampling or all_greedy):
            tokens = ids.numpy()[:n].tolist()  # drawn on the device; only ids come back
        elif self.ops.device_greedy and all_greedy:
            tokens = self.ops.greedy(logits)  # argmax on the device; only ids come back
        else:
            tokens = sample(
                self.ops.logits_to_numpy(logits)[:n], params, [w.num_generated for w in items]
            )
        return {w.request_id: int(t) for w, t in zip(items, tokens, strict=True)}

    def prepare_weights(self, path: str) -> PreparedWeights:
        np_weights = load_update(self.config, path)
        return PreparedWeights(path, build_weights(self.config, np_weights, self.dtype, self.ops))

    def swap_weights(self, prepared: object) -> None:
        if not isinstance(prepared, PreparedWeights):
            raise TypeError("swap_weights expects the result of prepare_weights")
        if self.graphs is not None:
            from engine_pod.model.cuda_graphs import copy_weights

            # into the buffers the captured graphs read: they stay valid
            copy_weights(self.ops, self.weights, prepared.weights)  # type: ignore[arg-type]
        else:
            self.weights = prepared.weights
        self.weights_path = prepared.path
