#!/usr/bin/env bash
# hack/kube-up.sh - run a local, real Kubernetes control plane for integration tests.
#
# Usage:
#   hack/kube-up.sh start <statedir>   start (or keep) etcd + kube-apiserver +
#                                      kube-controller-manager; writes <statedir>/kubeconfig
#   hack/kube-up.sh stop  <statedir>   stop all three
#   hack/kube-up.sh env   <statedir>   print `export KUBECONFIG=...` (and the server URL)
#
# Why: the operator must be tested against a real API server (CRDs, server-side apply,
# watches) and a real Job controller, and no registry we can reach ships kind/k3s/envtest.
# hack/install-tools.sh kube builds kube-apiserver/kube-controller-manager (v1.20) from
# Debian's source package and extracts Debian's etcd; this script runs them on 127.0.0.1
# only, on free ports, with a throw-away CA and a static admin token. There is no
# scheduler and no kubelet: Pods stay Pending until a test patches their status.
# The ServiceAccount admission plugin is disabled, so Pods need no service account.
#
# Each `start` of a stopped cluster begins with an empty etcd; certificates and the
# token are generated once per <statedir> and reused.
#
# Files written:
#   <statedir>/kubeconfig   admin kubeconfig (CA embedded, bearer token)
#   <statedir>/kube.env     KUBECONFIG=..., MIRA_KUBE_SERVER=https://127.0.0.1:<port>
#   <statedir>/kube/        pki/, tokens.csv, etcd-data/, *.log, *.pid, ports
#
# Environment: MIRA_KUBE_PORT (API server port; default: a free one),
# MIRA_KUBE_START_TIMEOUT (seconds, default 180), MIRA_KUBE_FEATURE_GATES (passed to the
# API server and controller manager, e.g. TTLAfterFinished=true), MIRA_CACHE, MIRA_VERBOSE.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

START_TIMEOUT="${MIRA_KUBE_START_TIMEOUT:-180}"
COMPONENTS=(kube-controller-manager kube-apiserver etcd)   # stop order

# ---------------------------------------------------------------- certificates

gen_pki() {
  local pki="$1"
  mkdir -p "$pki"
  chmod 700 "$pki"
  if [[ ! -f "$pki/ca.crt" || ! -f "$pki/ca.key" ]]; then
    openssl genrsa -out "$pki/ca.key" 2048 2>/dev/null
    openssl req -x509 -new -key "$pki/ca.key" -sha256 -days 3650 -subj "/CN=mira-test-ca" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
      -out "$pki/ca.crt" 2>/dev/null
    rm -f "$pki/apiserver.crt"
  fi
  if [[ ! -f "$pki/apiserver.crt" || ! -f "$pki/apiserver.key" ]]; then
    cat >"$pki/apiserver.ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer
subjectAltName=IP:127.0.0.1,DNS:localhost,IP:10.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc
EXT
    openssl genrsa -out "$pki/apiserver.key" 2048 2>/dev/null
    openssl req -new -key "$pki/apiserver.key" -subj "/CN=kube-apiserver" -out "$pki/apiserver.csr" 2>/dev/null
    openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
      -CAcreateserial -sha256 -days 3650 -extfile "$pki/apiserver.ext" \
      -out "$pki/apiserver.crt" 2>/dev/null
    rm -f "$pki/apiserver.csr"
  fi
  if [[ ! -f "$pki/sa.key" || ! -f "$pki/sa.pub" ]]; then
    openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
    openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  fi
  chmod 600 "$pki"/*.key
}

# ---------------------------------------------------------------- helpers

KDIR=""      # <statedir>/kube
TOKEN=""
API_PORT=""

api_get() {   # api_get PATH : GET on the API server as admin; succeeds on 2xx
  curl -fsS -o /dev/null --max-time 5 --cacert "$KDIR/pki/ca.crt" \
    -H "Authorization: Bearer $TOKEN" "https://127.0.0.1:$API_PORT$1" 2>/dev/null
}

all_alive() {
  pid_alive "$KDIR/etcd.pid" etcd &&
    pid_alive "$KDIR/kube-apiserver.pid" kube-apiserver &&
    pid_alive "$KDIR/kube-controller-manager.pid" kube-controller-manager
}

stop_all() {   # all three at once: about 3 s instead of 7
  local c
  for c in "${COMPONENTS[@]}"; do
    stop_pidfile "$KDIR/$c.pid" "$c" "$c" &
  done
  wait
}

# fail_start MSG [COMPONENT] : show the logs of whatever died (and of COMPONENT, the one
# waited on), stop everything, exit 1.
fail_start() {
  local c
  for c in etcd kube-apiserver kube-controller-manager; do
    if [[ "$c" == "${2:-}" ]] || { [[ -f "$KDIR/$c.pid" ]] && ! pid_alive "$KDIR/$c.pid" "$c"; }; then
      log_tail "$KDIR/$c.log"
    fi
  done
  stop_all
  die "$1 (logs in $KDIR)"
}

# wait_until TIMEOUT WHAT PIDNAME CMD... : poll CMD until it succeeds; fail early if the
# named component died.
wait_until() {
  local timeout="$1" what="$2" comp="$3" rc=0
  shift 3
  wait_ready "$timeout" 0.25 "$KDIR/$comp.pid" "$comp" "$@" || rc=$?
  ((rc != 1)) || fail_start "$comp exited while waiting for $what" "$comp"
  ((rc != 2)) || fail_start "timed out after ${timeout}s waiting for $what" "$comp"
}

# start_etcd ETCD : start etcd on an empty data dir and wait for its health, on fresh ports each
# time, up to 3 times. A port that was free when chosen can be bound by another process before
# etcd binds it (etcd then exits at once: "address already in use"); choosing again mends that.
# Sets ETCD_PORT and ETCD_PEER_PORT; each failed attempt's log is kept as etcd.attempt<N>.log.
ETCD_PORT=""
ETCD_PEER_PORT=""
start_etcd() {
  local attempt rc
  for attempt in 1 2 3; do
    ETCD_PORT="$(free_port)"
    ETCD_PEER_PORT="$(free_port "$ETCD_PORT")"
    rm -rf "$KDIR/etcd-data"
    : >"$KDIR/etcd.log"
    log "starting etcd on 127.0.0.1:$ETCD_PORT (attempt $attempt)"
    start_daemon "$KDIR/etcd.pid" "$KDIR/etcd.log" "$1" \
      --name=mira --data-dir="$KDIR/etcd-data" --unsafe-no-fsync \
      --listen-client-urls="http://127.0.0.1:$ETCD_PORT" \
      --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
      --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
      --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
      --initial-cluster="mira=http://127.0.0.1:$ETCD_PEER_PORT" \
      --initial-cluster-state=new --logger=zap --log-outputs=stderr
    rc=0
    wait_ready 30 0.25 "$KDIR/etcd.pid" etcd \
      curl -fs -o /dev/null --max-time 2 "http://127.0.0.1:$ETCD_PORT/health" || rc=$?
    ((rc == 0)) && return 0
    printf 'kube-up: etcd did not start (attempt %d of 3)\n' "$attempt" >&2
    log_tail "$KDIR/etcd.log"
    cp "$KDIR/etcd.log" "$KDIR/etcd.attempt$attempt.log"
    stop_pidfile "$KDIR/etcd.pid" etcd etcd
  done
  fail_start "etcd did not become healthy in 3 attempts" etcd
}

write_kubeconfig() {
  local state="$1" file="$2" ca
  ca="$(base64 -w0 <"$KDIR/pki/ca.crt")"
  cat >"$file.tmp" <<KC
apiVersion: v1
kind: Config
clusters:
- name: mira-test
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $ca
users:
- name: admin
  user:
    token: $TOKEN
contexts:
- name: mira-test
  context:
    cluster: mira-test
    user: admin
    namespace: default
current-context: mira-test
KC
  chmod 600 "$file.tmp"
  mv "$file.tmp" "$file"
}

# ---------------------------------------------------------------- commands

cmd_start() {
  local state="$1"
  need_cmd openssl curl base64 setsid
  mkdir -p "$state"
  state="$(cd "$state" && pwd)"
  KDIR="$state/kube"
  mkdir -p "$KDIR"

  if all_alive && [[ -f "$KDIR/ports" && -f "$state/kubeconfig" ]]; then
    # shellcheck disable=SC1091
    source "$KDIR/ports"
    TOKEN="$(cut -d, -f1 "$KDIR/tokens.csv")"
    if api_get /readyz; then
      log "control plane already running on https://127.0.0.1:$API_PORT"
      return 0
    fi
  fi
  stop_all   # partial or unhealthy leftovers

  local etcd apiserver kcm
  use_tools kube
  etcd="$MIRA_ETCD" apiserver="$MIRA_KUBE_APISERVER" kcm="$MIRA_KUBE_CONTROLLER_MANAGER"

  gen_pki "$KDIR/pki"
  if [[ ! -s "$KDIR/tokens.csv" ]]; then
    TOKEN="$(openssl rand -hex 24)"
    echo "$TOKEN,admin,admin,system:masters" >"$KDIR/tokens.csv"
    chmod 600 "$KDIR/tokens.csv"
  fi
  TOKEN="$(cut -d, -f1 "$KDIR/tokens.csv")"

  local c
  for c in etcd kube-apiserver kube-controller-manager; do : >"$KDIR/$c.log"; done
  start_etcd "$etcd"
  API_PORT="${MIRA_KUBE_PORT:-$(free_port "$ETCD_PORT" "$ETCD_PEER_PORT")}"
  [[ "$API_PORT" =~ ^[0-9]+$ ]] || die "MIRA_KUBE_PORT must be a port number, got '$API_PORT'"
  port_in_use "$API_PORT" && die "port $API_PORT on 127.0.0.1 is already in use"
  printf 'API_PORT=%s\nETCD_PORT=%s\n' "$API_PORT" "$ETCD_PORT" >"$KDIR/ports"

  local gates=()
  [[ -n "${MIRA_KUBE_FEATURE_GATES:-}" ]] && gates=(--feature-gates="$MIRA_KUBE_FEATURE_GATES")

  log "starting kube-apiserver on 127.0.0.1:$API_PORT"
  start_daemon "$KDIR/kube-apiserver.pid" "$KDIR/kube-apiserver.log" "$apiserver" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 \
    --secure-port="$API_PORT" --insecure-port=0 \
    --cert-dir="$KDIR/pki" \
    --tls-cert-file="$KDIR/pki/apiserver.crt" --tls-private-key-file="$KDIR/pki/apiserver.key" \
    --client-ca-file="$KDIR/pki/ca.crt" \
    --token-auth-file="$KDIR/tokens.csv" \
    --authorization-mode=RBAC \
    --service-cluster-ip-range=10.0.0.0/24 \
    --service-account-issuer=https://kubernetes.default.svc \
    --service-account-key-file="$KDIR/pki/sa.pub" \
    --service-account-signing-key-file="$KDIR/pki/sa.key" \
    --disable-admission-plugins=ServiceAccount \
    --endpoint-reconciler-type=none \
    --profiling=false \
    "${gates[@]}"
  wait_until "$START_TIMEOUT" "kube-apiserver /readyz" kube-apiserver api_get /readyz
  wait_until 60 "the default namespace" kube-apiserver api_get /api/v1/namespaces/default

  write_kubeconfig "$state" "$KDIR/kcm.kubeconfig"
  log "starting kube-controller-manager"
  start_daemon "$KDIR/kube-controller-manager.pid" "$KDIR/kube-controller-manager.log" "$kcm" \
    --kubeconfig="$KDIR/kcm.kubeconfig" \
    --leader-elect=false --secure-port=0 --port=0 \
    '--controllers=*,-nodelifecycle' \
    --service-account-private-key-file="$KDIR/pki/sa.key" \
    --use-service-account-credentials=false \
    --root-ca-file="$KDIR/pki/ca.crt" \
    --cluster-signing-cert-file="$KDIR/pki/ca.crt" \
    --cluster-signing-key-file="$KDIR/pki/ca.key" \
    --profiling=false \
    "${gates[@]}"
  # The service-account controller creates default/default soon after the controller
  # manager is up: use it as the sign that the controllers (Job included) run.
  wait_until 60 "kube-controller-manager (default service account)" kube-controller-manager \
    api_get /api/v1/namespaces/default/serviceaccounts/default

  write_kubeconfig "$state" "$state/kubeconfig"
  printf 'KUBECONFIG=%s\nMIRA_KUBE_SERVER=https://127.0.0.1:%s\n' "$state/kubeconfig" "$API_PORT" \
    >"$state/kube.env"
  log "control plane ready at https://127.0.0.1:$API_PORT; KUBECONFIG=$state/kubeconfig"
}

cmd_stop() {
  local state="$1"
  [[ -d "$state/kube" ]] || return 0
  KDIR="$(cd "$state" && pwd)/kube"
  stop_all
  rm -f "$state/kube.env" "$KDIR/ports"
}

server_main kube.env "$@"
