#!/usr/bin/env bash
# The device half of the GPU recipe (see bench/gpu/README.md). Run on the GPU machine from the
# checkout's root, after the payload pieces p00..p08 were copied to /tmp/p/ by earlier calls:
#   bash bench/gpu/device_run.sh            # STAGES: kernels samples graphs greedy pytest bench (default); also: sweep bench_nopdl bench_nostream bench_norope bench_base bench_deep1024 bench_v1 configs ops profile pause
# Installs Paddle (PyPI paddlepaddle-gpu 2.6.2 + cuBLAS 12) into /tmp/site unless it is there,
# builds the kernel library with nvcc unless it was carried, then runs each stage with its own
# time limit and writes results to $OUT (or /tmp/out).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
STAGES=${STAGES:-"kernels samples graphs greedy pytest bench"}
t0=$(date +%s)
if [ ! -d /tmp/site/paddle ]; then
  n=$(ls /tmp/p/p[0-9][0-9] 2>/dev/null | wc -l)
  echo "payload pieces in /tmp/p: $n"
  if [ -f .payload/payload.sha256 ]; then
    want=$(cat .payload/payload.sha256); got=$(cat /tmp/p/p[0-9][0-9] | sha256sum | cut -d' ' -f1)
    [ "$want" = "$got" ] || { echo "payload sha256 mismatch: $got != $want"; exit 3; }
  fi
  bash bench/gpu/unpack.sh || { echo "unpack failed"; exit 4; }
fi
if ls /tmp/w/*.whl >/dev/null 2>&1; then  # the engine pod's packages (stage pause)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site /tmp/w/*.whl 2>&1 | grep -v -i "warning" || true
fi
export PYTHONPATH=/tmp/site:$PWD LD_LIBRARY_PATH=/tmp/site/nvidia/cublas/lib:${LD_LIBRARY_PATH:-}
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 GLOG_minloglevel=2
echo "install: $(( $(date +%s) - t0 ))s"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv | tee "$OUT/gpu.txt"
python3 -c "import paddle, numpy; print('paddle', paddle.__version__, 'numpy', numpy.__version__, paddle.device.cuda.get_device_name())" 2>&1 | grep -v Warn | tee -a "$OUT/gpu.txt"
if [ ! -f engine_pod/model/ops/build/librlfleet_ops.so ]; then
  t=$(date +%s); python3 -m engine_pod.model.ops.build && echo "nvcc build: $(( $(date +%s) - t ))s"
fi
run() {  # name limit_s command...
  local name=$1 lim=$2; shift 2
  local t=$(date +%s)
  echo "=== $name"
  timeout "$lim" "$@" 2>&1 | grep -v -e "UserWarning" -e "warnings.warn" | tee -a "$OUT/log.txt"
  echo "=== $name: rc ${PIPESTATUS[0]} in $(( $(date +%s) - t ))s"
}
for s in $STAGES; do
  case $s in
    ops) run ops_check 60 python3 bench/gpu/ops_check.py ;;
    kernels) run kernels 120 python3 bench/gpu/kernel_check.py --out "$OUT/kernels.json" ;;
    samples) run samples 120 python3 bench/gpu/sample_check.py --out "$OUT/sample.json" ;;
    graphs) run graphs 120 python3 bench/gpu/graph_check.py --out "$OUT/graphs.json" ;;
    pause) mkdir -p /tmp/pglogs
      run pause 200 python3 bench/gpu/pause_gpu.py --device gpu --models "${PAUSE_MODELS:-tiny}" \
        --out "$OUT/pause.json" --log-dir /tmp/pglogs
      for f in /tmp/pglogs/engine_*.log; do [ -f "$f" ] && tail -n 60 "$f" >> "$OUT/log.txt"; done ;;
    greedy) run greedy 240 python3 bench/gpu/greedy_check.py --out "$OUT/greedy.json" ;;
    pytest) run pytest 180 python3 -m pytest -q -p no:cacheprovider tests/engine/test_gpu_ops.py ;;
    bench_nostream) RLFLEET_STREAM_GEMM_ROWS=0 run bench_nostream 240 python3 bench/gpu/decode_bench.py --out "$OUT/bench_nostream.json" --graphs --batches 32,64 ;;
    bench_norope) RLFLEET_STREAM_ROPE=0 run bench_norope 240 python3 bench/gpu/decode_bench.py --out "$OUT/bench_norope.json" --graphs --batches 32,64 ;;
    bench_base) RLFLEET_STREAM_GEMM_ROWS=0 RLFLEET_ATTN_DEEP_ROWS=0 run bench_base 240 python3 bench/gpu/decode_bench.py --out "$OUT/bench_base.json" --graphs --batches 32,64 ;;
    bench_deep1024) RLFLEET_ATTN_DEEP_KEYS=1024 run bench_deep1024 240 python3 bench/gpu/decode_bench.py --out "$OUT/bench_deep1024.json" --graphs --batches 32,64 ;;
    bench_nopdl) RLFLEET_PDL=0 run bench_nopdl 240 python3 bench/gpu/decode_bench.py --out "$OUT/bench_nopdl.json" --graphs ;;
    bench_v1) RLFLEET_ATTN=v1 run bench_v1 150 python3 bench/gpu/decode_bench.py --out "$OUT/bench_v1.json" --graphs ;;
    sweep) mkdir -p /tmp/sweep  # decode bench per attention version : keys per split → sweep.json
      for v in ${SWEEP:-v5:128 v5:256 v4:64 v4:128 v2:64}; do
        RLFLEET_ATTN=${v%%:*} RLFLEET_ATTN_KPS=${v##*:} run "bench_${v/:/_}" 120 python3 \
          bench/gpu/decode_bench.py --graphs --sampling --out "/tmp/sweep/${v/:/_}.json"
      done
      python3 -c "import glob, json, os; json.dump({os.path.basename(f)[:-5]: json.load(open(f)) for f in sorted(glob.glob('/tmp/sweep/*.json'))}, open('$OUT/sweep.json', 'w'), indent=1)" ;;
    configs) mkdir -p /tmp/cfg  # decode_bench at 32, 64 rows per CONFIGS entry "name:VAR=v,VAR=v" → configs.json
      for c in ${CONFIGS:-deep512:RLFLEET_ATTN_DEEP_KEYS=512 deep1024:RLFLEET_ATTN_DEEP_KEYS=1024}; do
        name=${c%%:*}; vars=${c#*:}
        (export ${vars//,/ }; run "cfg_$name" 240 python3 bench/gpu/decode_bench.py --graphs \
          --batches "${CONFIG_BATCHES:-32,64}" --steps "${CONFIG_STEPS:-60}" --ctx "${CONFIG_CTX:-512}" --out "/tmp/cfg/$name.json")
      done
      python3 -c "import glob, json, os; json.dump({os.path.basename(f)[:-5]: json.load(open(f)) for f in sorted(glob.glob('/tmp/cfg/*.json'))}, open('$OUT/configs.json', 'w'), indent=1)" ;;
    profile) run profile 150 python3 bench/gpu/op_profile.py --out "$OUT/ops.json" ;;
    bench) run bench 240 python3 bench/gpu/decode_bench.py --out "$OUT/bench.json" ${BENCH_ARGS:---graphs --sampling} ;;
  esac
done
echo "total: $(( $(date +%s) - t0 ))s"
