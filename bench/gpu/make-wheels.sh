#!/usr/bin/env bash
# The engine pod's Python packages that the device image lacks (fastapi, starlette, uvicorn,
# pydantic(+core), pyzmq, annotated-types, typing-inspection, sniffio, opentelemetry-api, ...), as
# cp312 wheels in three folders small enough to ride beside a payload piece (a call carries
# 64 MiB; a piece is 59.8 MiB; the working tree ~1 MB): OUTDIR/wa (2.3 MB), wb (1.4 MB), wc (1.2 MB).
# The device image has tokenizers, safetensors, rich, httpx, prometheus-client; the versions of
# those we bring too are pinned to match each other (bench/gpu/device_pause.sh installs them
# all into /tmp/site, ahead of the image's packages on PYTHONPATH).
# Usage: make-wheels.sh OUTDIR   (e.g. .payload, git-ignored)
set -euo pipefail
out=$(realpath "${1:?usage: make-wheels.sh OUTDIR}")
plat="--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any"
get() {  # dir pkg...
  local d=$1; shift
  rm -rf "${out:?}/$d" && mkdir -p "$out/$d"
  # shellcheck disable=SC2086
  pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $plat \
    -d "$out/$d" "$@"
}
get wa pydantic_core==2.50.5
get wb pyzmq==27.3.0 pydantic==2.14.4
get wc fastapi==0.165.0 starlette==1.10.0 uvicorn==0.54.0 annotated-types==0.7.0 \
  typing-inspection==0.4.5 typing_extensions==4.16.0 sniffio==1.3.1 annotated-doc==0.0.7 \
  click==8.5.1 h11==0.16.0 anyio==4.16.0 httpx==0.28.1 httpcore==1.0.9 idna==3.20 \
  certifi==2026.5.20 prometheus_client==0.26.0 opentelemetry-api==1.45.2
du -sh "$out"/wa "$out"/wb "$out"/wc
