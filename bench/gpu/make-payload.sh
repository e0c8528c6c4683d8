#!/usr/bin/env bash
# Builds the payload that puts paddlepaddle-gpu (PyPI 2.6.2, cp312) + cuBLAS 12 on the lent GPU
# machine, in pieces small enough for one device call each (<= 60 MiB). See bench/gpu/README.md.
# Usage: make-payload.sh OUTDIR   (OUTDIR inside your checkout, listed in .git/info/exclude)
# Then: one device call per piece, each copying its piece to /tmp/p/ there, the machine kept
# warm (it is given back 30 s after a call); the last call runs unpack.sh. See FACTS.md.
set -euo pipefail
out=$(realpath "${1:?usage: make-payload.sh OUTDIR}")
here=$(dirname "$(realpath "$0")")  # before the cd below ($0 may be relative)
work=${RLFLEET_GPU_CACHE:-/tmp/rlfleet-gpu}
mkdir -p "$work/whl" "$out"
cd "$work"
plat="--platform manylinux1_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64"
pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $plat -d whl \
  paddlepaddle-gpu==2.6.2 nvidia-cublas-cu12==12.1.3.1 numpy==1.26.4 opt-einsum==3.3.0 decorator astor
rm -rf site cub pay && mkdir site cub pay
unzip -q whl/paddlepaddle_gpu-2.6.2-*.whl -d site
unzip -q whl/nvidia_cublas_cu12-*.whl -d cub
# libflashattn.so (290 MB) is loaded lazily and only by flash attention; leave it out.
tar cf - -C site --exclude=paddle/libs/libflashattn.so paddle _foo.cpython-312-x86_64-linux-gnu.so \
  paddlepaddle_gpu-2.6.2.dist-info | zstd -q -T0 -15 --long=27 -f -o pay/paddle.tar.zst
# -12, not -19: -19 took >10 min on a loaded 2-core machine for 16 MB less (255 vs 239 MB)
tar cf - -C cub nvidia | zstd -q -T0 -${CUBLAS_ZSTD_LEVEL:-12} --long=27 -f -o pay/cublas.tar.zst
cp whl/numpy-*.whl whl/opt_einsum-*.whl whl/decorator-*.whl whl/astor-*.whl pay/
cp "$(command -v zstd)" pay/zstd    # the device image has no zstd
tar cf payload.tar -C pay .
rm -f "$out"/p[0-9][0-9]
# equal pieces of at most 60 MiB (9 for this payload): a device call carries 64 MiB in all,
# the piece plus the working tree (~1.3 MB), so 62 MiB pieces leave too little room
n=$(( ( $(stat -c %s payload.tar) + 60*1048576 - 1 ) / (60*1048576) ))
split -n "$n" -d -a 2 payload.tar "$out/p"
cp "$here/unpack.sh" "$out/"
sha256sum payload.tar | cut -d' ' -f1 > "$out/payload.sha256"
ls -la "$out"
