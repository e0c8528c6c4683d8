"""Checkpoint integrity: one sha256 digest per checkpoint, and an optional per-file manifest.

The digest covers the files that decide the weights: `config.json` and every
`*.safetensors`. It is the sha256 of their `sha256sum`-style listing, sorted by
name, one line per file: `"<sha256 hex>  <file name>\\n"`. From a shell:

    cd CKPT && sha256sum $(ls config.json *.safetensors | LC_ALL=C sort) | sha256sum

A checkpoint may carry `rlfleet-manifest.json`: `{"files": {"<name>": "<sha256 hex>", ...}}`.
When present it must list every covered file, and every listed file must match.
`python -m engine_pod.model.digest DIR [--write-manifest]` prints the digest.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
from collections.abc import Mapping

from engine_pod.model.base import CheckpointError

MANIFEST = "rlfleet-manifest.json"
_CHUNK = 1 << 20


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def covered_files(ckpt_dir: str) -> list[str]:
    """Names of the files the digest covers, sorted."""
    names = [os.path.basename(p) for p in glob.glob(os.path.join(ckpt_dir, "*.safetensors"))]
    if os.path.exists(os.path.join(ckpt_dir, "config.json")):
        names.append("config.json")
    if not names:
        raise CheckpointError(f"{ckpt_dir}: no config.json or *.safetensors to digest")
    return sorted(names)


def file_hashes(ckpt_dir: str, known: Mapping[str, str] | None = None) -> dict[str, str]:
    """File name → sha256 hex of every covered file.

    `known`: absolute path → sha256 hex of files already hashed (by the loader, from the
    bytes it loaded); those are not read again.
    """
    known = known or {}
    out = {}
    for name in covered_files(ckpt_dir):
        path = os.path.join(ckpt_dir, name)
        out[name] = known.get(os.path.abspath(path)) or file_sha256(path)
    return out


def digest_of(hashes: dict[str, str]) -> str:
    listing = "".join(f"{hashes[name]}  {name}\n" for name in sorted(hashes))
    return hashlib.sha256(listing.encode()).hexdigest()


def check_manifest(ckpt_dir: str, hashes: dict[str, str]) -> None:
    """Raise CheckpointError if the checkpoint's manifest (when present) disagrees with `hashes`."""
    path = os.path.join(ckpt_dir, MANIFEST)
    if not os.path.exists(path):
        return
    try:
        with open(path) as f:
            listed = json.load(f)["files"]
        listed = {str(k): str(v).lower() for k, v in listed.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{MANIFEST} unreadable: {e}") from e
    for name, sha in hashes.items():
        if name not in listed:
            raise CheckpointError(f"{MANIFEST} does not list {name}")
        if listed[name] != sha:
            raise CheckpointError(f"{name}: sha256 {sha} differs from {MANIFEST} ({listed[name]})")
    for name in listed.keys() - hashes.keys():
        if not os.path.exists(os.path.join(ckpt_dir, name)):
            raise CheckpointError(f"{MANIFEST} lists {name}, which is missing")
        if file_sha256(os.path.join(ckpt_dir, name)) != listed[name]:
            raise CheckpointError(f"{name}: sha256 differs from {MANIFEST}")


def verify_checkpoint(
    ckpt_dir: str, expected: str | None = None, known: Mapping[str, str] | None = None
) -> str:
    """The checkpoint's digest, after checking its manifest and the `expected` digest if given.

    `known`: as for `file_hashes` (the same digest, without hashing those files again).
    """
    if not os.path.isdir(ckpt_dir):
        raise CheckpointError(f"{ckpt_dir}: not a directory")
    hashes = file_hashes(ckpt_dir, known)
    check_manifest(ckpt_dir, hashes)
    digest = digest_of(hashes)
    if expected is not None and expected.lower() != digest:
        raise CheckpointError(
            f"digest mismatch: expected {expected.lower()}, checkpoint has {digest}"
        )
    return digest


def write_manifest(ckpt_dir: str) -> str:
    """Write `rlfleet-manifest.json` for the checkpoint; return its digest."""
    hashes = file_hashes(ckpt_dir)
    with open(os.path.join(ckpt_dir, MANIFEST), "w") as f:
        json.dump({"files": hashes}, f, indent=2, sort_keys=True)
    return digest_of(hashes)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Print a checkpoint's rlfleet weights digest.")
    ap.add_argument("dir", help="HF-layout checkpoint directory")
    ap.add_argument("--write-manifest", action="store_true", help=f"also write {MANIFEST}")
    args = ap.parse_args(argv)
    print(write_manifest(args.dir) if args.write_manifest else verify_checkpoint(args.dir))


if __name__ == "__main__":
    main()
