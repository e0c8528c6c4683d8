"""Build the CUDA kernel library (`kernels.cu` → `librlfleet_ops.so`) with nvcc.

    python -m engine_pod.model.ops.build [--out PATH] [--arch 90 --arch 80]

Needs only nvcc (no GPU, no Paddle): the library links the CUDA runtime statically and
talks to Paddle through raw device pointers and stream handles, so it can be built on
any x86-64 machine with nvcc 12+/13 and carried to the GPU machine. The default output
is `engine_pod/model/ops/build/librlfleet_ops.so` (git-ignored); `RLFLEET_OPS_LIB`
points the runtime at another file.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "kernels.cu")
DEFAULT_LIB = os.path.join(HERE, "build", "librlfleet_ops.so")
DEFAULT_ARCHS = ("90",)


def lib_path() -> str:
    """Where the runtime looks for the library."""
    return os.environ.get("RLFLEET_OPS_LIB") or DEFAULT_LIB


def nvcc_command(out: str, archs: tuple[str, ...] = DEFAULT_ARCHS, nvcc: str = "nvcc") -> list[str]:
    cmd = [nvcc, "-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", "-lineinfo",
           "--resource-usage"]  # fmt: skip
    for a in archs:
        cmd += [f"-gencode=arch=compute_{a},code=sm_{a}"]
    return [*cmd, "-o", out, SOURCE]


def build(out: str | None = None, archs: tuple[str, ...] = DEFAULT_ARCHS) -> str:
    """Compile and return the library path; raise RuntimeError with nvcc's output on failure."""
    out = out or lib_path()
    nvcc = shutil.which("nvcc") or (
        "/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None
    )
    if nvcc is None:
        raise RuntimeError("nvcc not found: cannot build the CUDA kernel library")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp"
    res = subprocess.run(nvcc_command(tmp, archs, nvcc), capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"nvcc failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    os.replace(tmp, out)
    return out


def sources() -> list[str]:
    """kernels.cu and the headers it includes (ops/*.cuh)."""
    return [SOURCE] + sorted(os.path.join(HERE, f) for f in os.listdir(HERE) if f.endswith(".cuh"))


def is_stale(path: str) -> bool:
    if not os.path.exists(path):
        return True
    return os.path.getmtime(path) < max(os.path.getmtime(f) for f in sources())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--arch", action="append", help="SM version(s), default 90")
    args = ap.parse_args(argv)
    path = build(args.out, tuple(args.arch) if args.arch else DEFAULT_ARCHS)
    print(path, file=sys.stdout)


if __name__ == "__main__":
    main()
