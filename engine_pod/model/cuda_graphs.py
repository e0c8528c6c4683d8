"""CUDA graphs of decode steps for the GPU runner (`PaddleModelRunner` with `CudaOps`).

A decode step launches ~250 small kernels (24 layers x ~10 ops, head, sampler); eagerly,
the host's Python launch cost is several times the GPU's work. So each decode step shape
is captured once as a CUDA graph (`paddle.device.cuda.graphs.CUDAGraph`) and replayed:

- key = (batch bucket, block-table stride bucket). A batch of n decode rows runs in the
  graph of the smallest bucket >= n, padded with greedy rows that write and read only a
  scratch KV block (the cache has one block more than the engine's block manager sees).
  The stride is `cuda.stride_bucket` of the longest context, the same rule eager steps
  use, so paged attention splits and rounds alike in both.
- the step's indices (token ids, positions, slots, block tables, sampling parameters)
  live in one static int64 device buffer, overwritten from the host before each replay;
  the graph's logits and sampled ids are static device tensors read after it.
- captured lazily, on a shape's first step (an eager warm-up on padding rows first, so
  cuBLAS has its handles and workspaces). Eager steps remain for prefill and mixed steps,
  batches over the largest bucket, and any shape whose capture failed.
- look-ahead steps (`feed`): the engine core launches step N + 1 before N's tokens are
  back; its input ids are copied on the device from N's sampled ids (same requests, same
  order), and each step's ids come back through pinned memory and an event, so waiting
  for N does not wait for N + 1 queued behind it.
- weights: `PaddleModelRunner.swap_weights` copies new weights into the tensors the graphs
  read, so the graphs stay valid across updates; a new KV cache (`allocate_kv_cache`)
  drops every graph (`attach`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import paddle

from engine_pod.model.base import FEED_TOKEN, SamplingParams, SeqWork
from engine_pod.model.llama import DecoderWeights, PagedDecoder, PagedKVCache
from engine_pod.model.ops.cuda import CudaOps, stride_bucket
from engine_pod.model.sampler import device_rows
from engine_pod.model.step_plan import plan_step

log = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
_PAD = SamplingParams(temperature=0.0)


def batch_buckets(max_batch: int) -> list[int]:
    """The captured batch sizes up to `max_batch` (which is always one)."""
    return [b for b in BATCH_BUCKETS if b < max_batch] + [max_batch]


def weight_tensors(w: DecoderWeights) -> list[paddle.Tensor]:
    """Every distinct weight tensor, in a fixed order (a tied lm_head once)."""
    out = [w.embed, w.norm] + ([] if w.lm_head is w.embed else [w.lm_head])
    for lw in w.layers:
        out += [lw.input_norm, lw.qkv, lw.o, lw.post_norm, lw.gate_up, lw.down]
        out += [t for t in (lw.qkv_bias, lw.o_bias) if t is not None]
    return out


def copy_weights(ops: CudaOps, dst: DecoderWeights, src: DecoderWeights) -> None:
    """Overwrite `dst`'s device tensors with `src`'s (same model config), then synchronize."""
    a, b = weight_tensors(dst), weight_tensors(src)
    if len(a) != len(b):
        raise ValueError(f"weights differ in structure: {len(a)} vs {len(b)} tensors")
    ops.refresh_stream()
    for d, s in zip(a, b, strict=True):
        ops.copy_into(d, s)
    ops.synchronize()


def pack_decode(
    batch: list[SeqWork],
    block_size: int,
    num_blocks: int,
    vocab_size: int,
    max_len: int,
    buckets: list[int],
    feed: bool = False,
) -> tuple[np.ndarray, tuple[int, int]] | None:
    """A decode step straight into a graph's input buffer: (buffer, (batch bucket, stride)).

    The `CudaOps.pack_step(plan, pad_to=bucket, pad_block=num_blocks)` layout, built from
    the `SeqWork`s without a `StepPlan` (the planner's per-item work is most of a graph
    step's host time): one Python pass a field, the block tables flattened by one C-level
    iteration and scattered through a mask. None when the step is not a graph's (a prefill
    chunk, a row not sampled, too many rows) or fails validation: then the caller plans it
    the usual way, which runs it eagerly or raises the planner's ValueError. With `feed`
    every token must be FEED_TOKEN (written as 0: the caller copies the ids in on the device).
    """
    n = len(batch)
    if not 0 < n <= buckets[-1]:
        return None
    if not all([len(w.token_ids) == 1 and w.sample for w in batch]):
        return None
    ids = np.array([w.token_ids[0] for w in batch], dtype=np.int64)
    if feed:
        if (ids != FEED_TOKEN).any():
            return None
        ids[:] = 0
    pos = np.array([w.start_pos for w in batch], dtype=np.int64)
    tables = [w.block_table for w in batch]
    lens = np.array(list(map(len, tables)), dtype=np.int64)
    need = pos // block_size + 1
    if (
        ids.min() < 0
        or ids.max() >= vocab_size
        or pos.min() < 0
        or pos.max() >= max_len
        or (lens < need).any()
        or len({w.request_id for w in batch}) != n
    ):
        return None
    if not (lens == need).all():  # longer tables than the step reads: their prefixes
        tables = [t[:k] for t, k in zip(tables, need.tolist(), strict=True)]
    ends = np.cumsum(need)
    flat = np.fromiter(chain.from_iterable(tables), dtype=np.int64, count=int(ends[-1]))
    if flat.min() < 0 or flat.max() >= num_blocks:  # out of range, or the scratch block
        return None
    bucket = next(b for b in buckets if b >= n)
    stride = stride_bucket(int(need.max()))
    buf = np.empty(11 * bucket + bucket * stride, dtype=np.int64)
    buf[:n] = ids
    buf[n:bucket] = 0
    buf[bucket : bucket + n] = pos
    buf[bucket + n : 2 * bucket] = 0
    buf[2 * bucket : 2 * bucket + n] = flat[ends - 1]  # each row's last block: its new slot
    buf[2 * bucket + n : 3 * bucket] = num_blocks  # padding rows: position 0 of the scratch block
    buf[3 * bucket : 3 * bucket + n] = pos % block_size
    buf[3 * bucket + n : 4 * bucket] = 0
    rows = np.arange(bucket, dtype=np.int64)
    buf[4 * bucket : 5 * bucket] = rows  # each row its own sequence
    buf[5 * bucket : 6 * bucket] = rows  # every row sampled
    samp = buf[6 * bucket : 11 * bucket].reshape(bucket, 5)
    samp[:n] = device_rows([w.sampling for w in batch], [w.num_generated for w in batch])
    samp[n:] = device_rows([_PAD], [0])
    mat = buf[11 * bucket :].reshape(bucket, stride)
    mat.fill(num_blocks)
    mat[:n][np.arange(stride) < need[:, None]] = flat
    return buf, (bucket, stride)


class HostIds:
    """Pinned host memory for a graph step's input and its sampled ids, and an event after
    them: the host waits for that step alone, not for a look-ahead step queued behind it."""

    def __init__(self, ops: CudaOps) -> None:
        self.ops = ops
        self.event = ops.event()
        self.input = ops.pinned_int64(0)
        self.ids = ops.pinned_int64(0)
        self.pending = False
        self.n = 0

    def wait(self) -> None:
        if self.pending:
            self.ops.event_wait(self.event)
            self.pending = False

    def stage(self, buf: np.ndarray) -> np.ndarray:
        """`buf` copied into pinned memory (the copy to the device is then asynchronous)."""
        if self.input.size < buf.size:
            self.input = self.ops.pinned_int64(buf.size)
        out = self.input[: buf.size]
        out[:] = buf
        return out

    def queue_ids(self, ids: paddle.Tensor, n: int) -> HostIds:
        """Queue ids[:n] back to the host, then the event (on the stream, after the step)."""
        if self.ids.size < n:
            self.ids = self.ops.pinned_int64(max(n, int(ids.shape[0])))
        self.ops.ids_to_host(self.ids, ids, n)
        self.ops.event_record(self.event)
        self.pending, self.n = True, n
        return self

    def tokens(self) -> list[int]:
        """The step's sampled ids, once it is done."""
        self.wait()
        return self.ids[: self.n].tolist()


@dataclass
class _Graph:
    graph: Any  # paddle.device.cuda.graphs.CUDAGraph
    meta: paddle.Tensor  # int64: the step's indices (CudaOps.pack_step layout)
    logits: paddle.Tensor  # float32 [batch, vocab]
    ids: paddle.Tensor  # int64 [batch] sampled on the device


class DecodeGraphs:
    """Captured decode steps of one runner, keyed by (batch bucket, table stride)."""

    def __init__(
        self, ops: CudaOps, decoder: PagedDecoder, max_batch: int = 128, need_logits: bool = True
    ) -> None:
        """`need_logits`: the runner may read a replay's logits (host sampling); without it
        the graphs may draw tokens without writing them (`CudaOps.logits_and_ids`)."""
        self.ops, self.decoder = ops, decoder
        self.need_logits = need_logits
        self.buckets = batch_buckets(max_batch)
        self.graphs: dict[tuple[int, int], _Graph] = {}
        self.failed: set[tuple[int, int]] = set()
        self.cache: PagedKVCache | None = None
        self.scratch = 0
        self.captures = self.replays = 0
        self._slots = [HostIds(ops), HostIds(ops)]  # a step in flight and the one after it
        # the last replay's (request ids, sampled ids on the device): a `feed` step's input
        self.last: tuple[list[str], paddle.Tensor] | None = None

    def attach(self, cache: PagedKVCache, scratch_block: int) -> None:
        """Use a new KV cache (its block `scratch_block` is reserved for padding rows)."""
        self.invalidate()
        self.cache, self.scratch = cache, scratch_block

    def invalidate(self) -> None:
        """Drop every graph (their memory returns to Paddle); later steps recapture."""
        for g in self.graphs.values():
            g.graph.reset()
        self.graphs.clear()
        self.last = None
        self.failed.clear()

    def run(
        self, weights: DecoderWeights, batch: list[SeqWork], feed: bool = False
    ) -> tuple[paddle.Tensor, paddle.Tensor, HostIds] | None:
        """Queue a decode step from its graph (capturing it first if new): (logits, ids,
        host ids) with the batch's rows first, in batch order; `HostIds.tokens()` returns the
        ids once the step is done. With `feed`, the batch is the last run's requests in
        order and their input ids are that run's sampled ids. None when it is not a graph's
        step (see `pack_decode`) or its shape cannot be captured: run it eagerly then."""
        if self.cache is None:
            return None
        order = [w.request_id for w in batch]
        if feed and (self.last is None or self.last[0] != order):
            return None
        cfg = self.decoder.cfg
        packed = pack_decode(batch, self.cache.block_size, self.scratch, cfg.vocab_size,
                             cfg.max_position_embeddings, self.buckets, feed)  # fmt: skip
        if packed is None:
            return None
        buf, key = packed
        g = self.graphs.get(key)
        if g is None:
            if key in self.failed:
                return None
            try:
                g = self._capture(weights, *key)
            except Exception:
                log.exception("CUDA graph capture for batch %d, stride %d failed: eager", *key)
                self.failed.add(key)
                return None
            self.graphs[key] = g
        if buf.size != int(g.meta.shape[0]):
            raise RuntimeError(f"graph input {buf.size} != captured {g.meta.shape[0]}")
        self.ops.refresh_stream()
        slot = self._slots[self.replays % len(self._slots)]
        slot.wait()  # its last step is done (always so when each launch is waited in turn)
        self.ops.copy_to_device(g.meta, slot.stage(buf))
        if feed:
            assert self.last is not None
            self.ops.copy_ids(g.meta, self.last[1], len(batch))  # ids sit first in the input
        g.graph.replay()
        self.replays += 1
        self.last = (order, g.ids)
        return g.logits, g.ids, slot.queue_ids(g.ids, len(batch))

    def _capture(self, weights: DecoderWeights, batch: int, stride: int) -> _Graph:
        from paddle.device.cuda.graphs import CUDAGraph

        ops, dec, cache = self.ops, self.decoder, self.cache
        assert cache is not None
        cfg, bs = dec.cfg, cache.block_size
        pads = [SeqWork(f"pad{i}", [0], 0, [self.scratch], True, _PAD) for i in range(batch)]
        plan = plan_step(pads, bs, cache.num_blocks, cfg.vocab_size,
                         cfg.max_position_embeddings, context_slots=False)  # fmt: skip
        buf, offs, _ = ops.pack_step(plan, bs, stride=stride, pad_to=batch, pad_block=self.scratch)
        meta = ops.upload_int64(buf)

        def step() -> tuple[paddle.Tensor, paddle.Tensor]:
            st = ops.step_on(cfg, plan, dec.rope, bs, meta, offs, stride)
            out = dec.forward_ids(weights, cache, plan, st, self.need_logits)
            assert out is not None  # every row of a decode step is sampled
            return out

        ops.refresh_stream()
        step()  # warm-up: cuBLAS handles and workspaces exist before the capture
        ops.synchronize()
        graph = CUDAGraph()
        graph.capture_begin()
        try:
            ops.refresh_stream()
            logits, ids = step()
        finally:
            graph.capture_end()
            ops.refresh_stream()
        self.captures += 1
        return _Graph(graph, meta, logits, ids)
