"""Read and write the safetensors format with numpy only, including bfloat16.

The format: 8-byte little-endian header length N, N bytes of JSON
(`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`),
then the raw little-endian tensor bytes. We parse it ourselves so that headers can be
validated without loading data (the synthetic runner), bfloat16 can be read (numpy has
no bf16: it comes back as uint16 bit patterns), and every defect becomes a
`CheckpointError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from engine_pod.model.base import CheckpointError

# safetensors dtype tag → (numpy storage dtype, bytes per element)
_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # raw bit patterns; see bf16_to_float32
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
# config.json torch_dtype → safetensors tag
TORCH_TO_ST = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's header entry; `offset` is absolute in the file."""

    name: str
    dtype: str  # safetensors tag, e.g. "F32", "BF16"
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    file: str


def read_header(path: str) -> dict[str, TensorInfo]:
    """Parse and check a safetensors header (offsets inside the file, sizes consistent)."""
    name = os.path.basename(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw = _read_raw_header(f, name, size)
    except OSError as e:
        raise CheckpointError(f"{name}: cannot read: {e}") from e
    return parse_header(raw, size, path)


def _read_raw_header(f: BinaryIO, name: str, size: int) -> bytes:
    """The 8-byte length and the JSON header, as stored (`f` at the start of the file)."""
    raw_len = f.read(8)
    if len(raw_len) < 8:
        raise CheckpointError(f"{name}: truncated safetensors file ({size} bytes, no header)")
    (n,) = struct.unpack("<Q", raw_len)
    if n > _MAX_HEADER or 8 + n > size:
        raise CheckpointError(
            f"{name}: corrupt safetensors header (declares {n} header bytes, file has {size})"
        )
    header_bytes = f.read(n)
    if len(header_bytes) != n:
        raise CheckpointError(f"{name}: truncated safetensors header")
    return raw_len + header_bytes


def parse_header(raw: bytes, size: int, path: str) -> dict[str, TensorInfo]:
    """Check the stored header `raw` (length + JSON) of a `size`-byte file at `path`."""
    name = os.path.basename(path)
    try:
        header = json.loads(raw[8:].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{name}: corrupt safetensors header: {e}") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{name}: corrupt safetensors header: not a JSON object")
    data_start = len(raw)
    data_len = size - data_start
    out: dict[str, TensorInfo] = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype = entry["dtype"]
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{name}: corrupt header entry for tensor {key!r}") from e
        if any(d < 0 for d in shape):
            raise CheckpointError(f"{name}: tensor {key!r} has a negative dimension {list(shape)}")
        if dtype not in _DTYPES:
            raise CheckpointError(f"{name}: tensor {key!r} has unsupported dtype {dtype}")
        expected = int(np.prod(shape, dtype=np.int64)) * _DTYPES[dtype].itemsize
        if end - begin != expected or begin < 0:
            raise CheckpointError(
                f"{name}: tensor {key!r} declares {end - begin} bytes but shape {list(shape)} "
                f"{dtype} needs {expected}"
            )
        if end > data_len:
            raise CheckpointError(
                f"{name}: truncated file: tensor {key!r} ends at byte {end} of the data section, "
                f"which has only {data_len} bytes"
            )
        out[key] = TensorInfo(key, dtype, shape, data_start + begin, end - begin, path)
    return out


def read_tensor(info: TensorInfo) -> np.ndarray:
    """Read one tensor's data (bf16 comes back as uint16 bits)."""
    dt = _DTYPES[info.dtype]
    try:
        with open(info.file, "rb") as f:
            f.seek(info.offset)
            buf = f.read(info.nbytes)
    except OSError as e:
        raise CheckpointError(f"{os.path.basename(info.file)}: cannot read: {e}") from e
    if len(buf) != info.nbytes:
        raise CheckpointError(
            f"{os.path.basename(info.file)}: truncated file while reading tensor {info.name!r}"
        )
    return np.frombuffer(buf, dtype=dt).reshape(info.shape)


class BackgroundHasher:
    """sha256 of byte buffers on one worker thread, in the order they are given.

    hashlib releases the GIL on large buffers, so hashing runs on a second core while
    the caller reads on. A buffer must not change until `wait()` returns.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256")
        self._pending: list[Future] = []
        self.busy_s = 0.0  # seconds the worker spent hashing

    def update(self, h: Any, buf: memoryview | bytes) -> None:
        """Queue `h.update(buf)` (`h`: a hashlib object only this hasher updates)."""
        self._pending.append(self._pool.submit(self._update, h, buf))

    def _update(self, h: Any, buf: memoryview | bytes) -> None:
        t0 = time.perf_counter()
        h.update(buf)
        self.busy_s += time.perf_counter() - t0

    def wait(self) -> None:
        """Block until every queued update is done."""
        for f in self._pending:
            f.result()
        self._pending.clear()

    def close(self) -> None:
        """Drop queued updates (after an error) and stop the worker."""
        self._pool.shutdown(wait=True, cancel_futures=True)


_CHUNK = 16 << 20  # bytes per read (and per hash update)


def _read_exact_into(f: BinaryIO, mv: memoryview, name: str, what: str) -> None:
    got = 0
    while got < len(mv):
        n = f.readinto(mv[got:])
        if not n:
            raise CheckpointError(f"{name}: truncated file while reading {what}")
        got += n


def read_file_into(
    path: str,
    expected: dict[str, TensorInfo],
    dests: dict[str, np.ndarray],
    hasher: BackgroundHasher | None = None,
) -> str | None:
    """Read a safetensors file in one sequential pass, every tensor straight into its array.

    `expected`: the file's tensors as validated before (`read_header`); the header is read
    again here and must be the same. `dests`: name → C-contiguous array of the tensor's shape
    (any float dtype: stored values are cast into it); tensors without one are skipped.
    With a `hasher`, every byte read is hashed on its thread and the file's sha256 hex (of
    exactly the bytes loaded) is returned.
    """
    name = os.path.basename(path)
    h = hashlib.sha256()

    def hashed(buf: memoryview | bytes) -> None:
        if hasher is not None:
            hasher.update(h, buf)

    try:
        with open(path, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            raw = _read_raw_header(f, name, size)
            infos = parse_header(raw, size, path)
            if any(infos.get(n) != info for n, info in expected.items()):
                raise CheckpointError(f"{name}: changed while being loaded (header differs)")
            hashed(raw)
            pos = len(raw)
            for info in sorted(infos.values(), key=lambda i: i.offset):
                if info.offset < pos:
                    raise CheckpointError(f"{name}: tensor {info.name!r} overlaps another one")
                if info.offset > pos:  # a gap between tensors: hashed, not used
                    gap = f.read(info.offset - pos)
                    if len(gap) != info.offset - pos:
                        raise CheckpointError(f"{name}: truncated file")
                    hashed(gap)
                _read_tensor_into(f, info, dests.get(info.name), hashed)
                pos = info.offset + info.nbytes
            while tail := f.read(_CHUNK):  # bytes after the last tensor count for the hash
                hashed(tail)
    except OSError as e:
        raise CheckpointError(f"{name}: cannot read: {e}") from e
    if hasher is None:
        return None
    hasher.wait()
    return h.hexdigest()


def _read_tensor_into(
    f: BinaryIO,
    info: TensorInfo,
    dest: np.ndarray | None,
    hashed: Callable[[memoryview | bytes], None],
) -> None:
    """Read one tensor (`f` at its first byte) into `dest`, casting when the dtypes differ."""
    name = os.path.basename(info.file)
    stored = _DTYPES[info.dtype]
    direct = dest is not None and dest.dtype == stored and info.dtype != "BF16"
    if dest is not None and (dest.shape != info.shape or not dest.flags.c_contiguous):
        raise ValueError(f"{info.name}: destination must be C-contiguous of shape {info.shape}")
    # the stored bytes land in `dest` itself, or in a buffer of their own to cast from
    buf = dest if direct else np.empty(info.nbytes, np.uint8)
    mv = memoryview(buf).cast("B") if buf.nbytes else memoryview(b"")
    for start in range(0, info.nbytes, _CHUNK):
        piece = mv[start : start + _CHUNK]
        _read_exact_into(f, piece, name, f"tensor {info.name!r}")
        hashed(piece)
    if dest is None or direct:
        return
    src = buf.view(stored).reshape(info.shape)
    if info.dtype == "BF16" and dest.dtype == np.float32:
        bits = dest.view(np.uint32)  # bf16 bits are the high half of a float32
        bits[...] = src
        bits <<= 16
    elif info.dtype == "BF16":
        dest[...] = bf16_to_float32(src)
    else:
        np.copyto(dest, src, casting="unsafe")


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) → float32."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 → bfloat16 bit patterns (uint16), round to nearest even."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = u + 0x7FFF + ((u >> 16) & 1)
    return (rounded >> 16).astype(np.uint16)


def to_float32(arr: np.ndarray, dtype_tag: str) -> np.ndarray:
    """Any stored float tensor → float32 numpy."""
    if dtype_tag == "BF16":
        return bf16_to_float32(arr)
    return arr.astype(np.float32, copy=False)


def write_safetensors_lazy(
    path: str,
    specs: dict[str, tuple[str, tuple[int, ...]]],
    produce: Callable[[str], np.ndarray],
) -> None:
    """Write tensors given `{name: (dtype_tag, shape)}`, calling `produce(name)` one at a time.

    Deterministic (names sorted, no metadata) and streaming, so multi-GB models never sit
    in memory twice. For "BF16", `produce` returns uint16 bit patterns.
    """
    header: dict[str, dict] = {}
    offset = 0
    for key in sorted(specs):
        tag, shape = specs[key]
        nbytes = int(np.prod(shape, dtype=np.int64)) * _DTYPES[tag].itemsize
        header[key] = {
            "dtype": tag,
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)  # align the data section to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for key in sorted(specs):
            tag, shape = specs[key]
            arr = np.ascontiguousarray(produce(key), dtype=_DTYPES[tag])
            if arr.shape != tuple(shape):
                raise ValueError(f"{key}: produced shape {arr.shape}, declared {shape}")
            f.write(arr.tobytes())


def write_safetensors(path: str, tensors: dict[str, tuple[str, np.ndarray]]) -> None:
    """Write `{name: (dtype_tag, array)}` (for "BF16": uint16 bit patterns)."""
    specs = {k: (tag, tuple(a.shape)) for k, (tag, a) in tensors.items()}
    write_safetensors_lazy(path, specs, lambda k: tensors[k][1])
