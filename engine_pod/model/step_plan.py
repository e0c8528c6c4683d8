"""Turn a step's `SeqWork` list into flat index arrays (numpy only, no Paddle).

Tokens are laid out decode-first: every single-token sequence, then each multi-token
(prefill) chunk. For each token we compute its position and its cache slot
(`block_table[pos // bs]`, `pos % bs`); for the decode group a padded gather matrix of
the context's slots plus each row's context length; for each prefill chunk its context
slots. The batch is validated here so a bad block table raises `ValueError` instead of
reading or corrupting another sequence's cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine_pod.model.base import SeqWork


@dataclass
class PrefillChunk:
    """One multi-token chunk: its rows in the flat batch and its context's cache slots."""

    row_start: int
    num_tokens: int
    start_pos: int
    ctx_blocks: np.ndarray  # [start_pos + num_tokens] physical block of each context position
    ctx_offsets: np.ndarray  # [start_pos + num_tokens] offset inside the block


@dataclass
class StepPlan:
    """Everything the forward needs besides weights and cache."""

    items: list[SeqWork]  # in flat order (decode first)
    token_ids: np.ndarray  # [T] int64
    positions: np.ndarray  # [T] int64
    slot_blocks: np.ndarray  # [T] int64 physical block for each new token
    slot_offsets: np.ndarray  # [T] int64
    num_decode: int  # rows 0..num_decode-1 are single-token sequences
    decode_blocks: np.ndarray  # [num_decode, max_ctx] padded with 0
    decode_offsets: np.ndarray  # [num_decode, max_ctx]
    decode_lens: np.ndarray  # [num_decode] context length (start_pos + 1)
    prefills: list[PrefillChunk]
    sample_rows: np.ndarray  # [S] flat row of the last token of every sampled item
    sample_items: list[SeqWork]  # the items those rows belong to


def _context_slots(item: SeqWork, length: int, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    pos = np.arange(length, dtype=np.int64)
    table = np.asarray(item.block_table, dtype=np.int64)
    return table[pos // block_size], pos % block_size


def validate_item(
    item: SeqWork, block_size: int, num_blocks: int, vocab_size: int, max_len: int
) -> None:
    """Raise ValueError if `item` cannot be computed safely."""
    rid = item.request_id
    if not item.token_ids:
        raise ValueError(f"request {rid}: empty token_ids")
    end = item.start_pos + len(item.token_ids)
    if item.start_pos < 0 or end > max_len:
        raise ValueError(
            f"request {rid}: positions {item.start_pos}..{end - 1} outside 0..{max_len - 1}"
        )
    need = (end + block_size - 1) // block_size
    if len(item.block_table) < need:
        raise ValueError(
            f"request {rid}: block table has {len(item.block_table)} blocks, positions up to "
            f"{end - 1} need {need}"
        )
    used = item.block_table[:need]
    if min(used) < 0 or max(used) >= num_blocks:
        raise ValueError(f"request {rid}: block id out of range 0..{num_blocks - 1}: {used}")
    bad = [t for t in item.token_ids if not 0 <= t < vocab_size]
    if bad:
        raise ValueError(
            f"request {rid}: token ids out of vocabulary (size {vocab_size}): {bad[:5]}"
        )


def plan_step(
    batch: list[SeqWork],
    block_size: int,
    num_blocks: int,
    vocab_size: int,
    max_len: int,
    context_slots: bool = True,
) -> StepPlan:
    """Validate `batch` and lay it out (decode group first, then prefill chunks).

    `context_slots=False` leaves the per-position context slots empty (`decode_blocks`,
    `decode_offsets` [n, 0], each chunk's `ctx_*`): ops that read the block tables on the
    device (CudaOps) need only the tables, and building those O(batch x context) arrays
    is most of the host's planning time at long contexts.
    """
    for item in batch:
        validate_item(item, block_size, num_blocks, vocab_size, max_len)
    if len({w.request_id for w in batch}) != len(batch):
        raise ValueError("a request appears twice in one step")
    decode = [w for w in batch if len(w.token_ids) == 1]
    prefill = [w for w in batch if len(w.token_ids) > 1]
    items = decode + prefill
    ids, pos = [], []
    for w in items:
        ids.extend(w.token_ids)
        pos.extend(range(w.start_pos, w.start_pos + len(w.token_ids)))
    token_ids = np.asarray(ids, dtype=np.int64)
    positions = np.asarray(pos, dtype=np.int64)
    slot_blocks = np.empty_like(positions)
    row = 0
    for w in items:
        n = len(w.token_ids)
        table = np.asarray(w.block_table, dtype=np.int64)
        slot_blocks[row : row + n] = table[positions[row : row + n] // block_size]
        row += n
    slot_offsets = positions % block_size

    nd = len(decode)
    lens = np.asarray([w.start_pos + 1 for w in decode], dtype=np.int64)
    width = int(lens.max()) if nd and context_slots else 0
    d_blocks = np.zeros((nd, width), dtype=np.int64)
    d_offsets = np.zeros((nd, width), dtype=np.int64)
    for i, w in enumerate(decode if context_slots else []):
        b, o = _context_slots(w, int(lens[i]), block_size)
        d_blocks[i, : lens[i]] = b
        d_offsets[i, : lens[i]] = o

    chunks, sample_rows, sample_items = [], [], []
    row = 0
    for w in items:
        n = len(w.token_ids)
        if n > 1:
            length = w.start_pos + n if context_slots else 0
            b, o = _context_slots(w, length, block_size)
            chunks.append(PrefillChunk(row, n, w.start_pos, b, o))
        if w.sample:
            sample_rows.append(row + n - 1)
            sample_items.append(w)
        row += n
    return StepPlan(
        items=items,
        token_ids=token_ids,
        positions=positions,
        slot_blocks=slot_blocks,
        slot_offsets=slot_offsets,
        num_decode=nd,
        decode_blocks=d_blocks,
        decode_offsets=d_offsets,
        decode_lens=lens,
        prefills=chunks,
        sample_rows=np.asarray(sample_rows, dtype=np.int64),
        sample_items=sample_items,
    )
