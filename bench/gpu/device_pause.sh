#!/usr/bin/env bash
# Issue 9 item 3 on the device: a real engine pod (`python -m engine_pod --device gpu`) over
# HTTP, pause under load (bench/gpu/pause_gpu.py). Run from the checkout's root on the GPU
# machine after the payload pieces p00..p08 were copied to /tmp/p/ and the engine's wheels
# (fastapi, uvicorn, pydantic, pyzmq, ...; .payload/wa wb wc, see README.md) to /tmp/w/:
#   OUT=$OUT bash bench/gpu/device_pause.sh        # MODELS="tiny 05b" (default), LIMIT_S=360
# Results to $OUT: pause.json, log.txt, gpu.txt, engine_tiny.log, engine_05b.log.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}
MODELS=${MODELS:-"tiny 05b"}
mkdir -p "$OUT" /tmp/pglogs
t0=$(date +%s)
if [ ! -d /tmp/site/paddle ]; then
  echo "payload pieces in /tmp/p: $(ls /tmp/p/p[0-9][0-9] 2>/dev/null | wc -l)"
  if [ -f .payload/payload.sha256 ]; then
    want=$(cat .payload/payload.sha256); got=$(cat /tmp/p/p[0-9][0-9] | sha256sum | cut -d' ' -f1)
    [ "$want" = "$got" ] || { echo "payload sha256 mismatch: $got != $want"; exit 3; }
  fi
  bash bench/gpu/unpack.sh || { echo "unpack failed"; exit 4; }
fi
if ls /tmp/w/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site /tmp/w/*.whl 2>&1 | grep -v -i "warning" || true
fi
export PYTHONPATH=/tmp/site:$PWD LD_LIBRARY_PATH=/tmp/site/nvidia/cublas/lib:${LD_LIBRARY_PATH:-}
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 GLOG_minloglevel=2
echo "install: $(( $(date +%s) - t0 ))s"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import paddle, numpy, fastapi, uvicorn, pydantic, zmq, tokenizers, safetensors, httpx, prometheus_client; print('paddle', paddle.__version__, 'numpy', numpy.__version__, 'fastapi', fastapi.__version__, 'uvicorn', uvicorn.__version__, 'pydantic', pydantic.__version__, 'zmq', zmq.__version__)" 2>&1 | grep -v Warn | tee -a "$OUT/gpu.txt"
if [ ! -f engine_pod/model/ops/build/librlfleet_ops.so ]; then
  t=$(date +%s); python3 -m engine_pod.model.ops.build && echo "nvcc build: $(( $(date +%s) - t ))s"
fi
t=$(date +%s)
models=$(echo "$MODELS" | tr ' ' ',')
timeout "${LIMIT_S:-360}" python3 bench/gpu/pause_gpu.py --device gpu --models "$models" \
  --out "$OUT/pause.json" --log-dir /tmp/pglogs 2>&1 | grep -v -e "UserWarning" -e "warnings.warn" \
  | tee -a "$OUT/log.txt"
echo "=== pause_gpu: rc ${PIPESTATUS[0]} in $(( $(date +%s) - t ))s" | tee -a "$OUT/log.txt"
for f in /tmp/pglogs/engine_*.log; do [ -f "$f" ] && tail -c 2000000 "$f" > "$OUT/$(basename "$f")"; done
echo "total: $(( $(date +%s) - t0 ))s"
