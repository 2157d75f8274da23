#!/usr/bin/env bash
# hack/s3-server.sh - run a local, real S3 server (SeaweedFS `weed mini`) for tests.
#
# Usage:
#   hack/s3-server.sh start <statedir>   start (or keep) the server; writes <statedir>/s3.env
#   hack/s3-server.sh stop  <statedir>   stop it (data under <statedir>/s3-data is kept)
#   hack/s3-server.sh env   <statedir>   print `export ...` lines from <statedir>/s3.env
#
# Why: MIRA reads and writes shards and results on S3; tests need a persistent,
# auth-enforcing S3 with multipart upload, conditional writes and paginated listing,
# which SeaweedFS provides. Everything listens on 127.0.0.1 only. The S3 port is
# MIRA_S3_PORT (default 8333); SeaweedFS' internal master/volume/filer ports are picked
# free, so several servers (with different MIRA_S3_PORT) can run side by side.
#
# <statedir>/s3.env (KEY=VALUE lines, usable with `set -a; . s3.env; set +a`):
#   MIRA_S3_ENDPOINT=http://127.0.0.1:<port>
#   AWS_ACCESS_KEY_ID=mira
#   AWS_SECRET_ACCESS_KEY=mira-secret-key
#   AWS_REGION=us-east-1
# Other files in <statedir>: s3.pid, s3.port(s), s3.log, s3-config.json, s3-data/, s3-conf/.
# The weed binary comes from hack/install-tools.sh s3 (installed on first use).
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

S3_ACCESS_KEY=mira
S3_SECRET_KEY=mira-secret-key
S3_REGION=us-east-1
START_TIMEOUT="${MIRA_S3_START_TIMEOUT:-60}"

# s3_ready PORT : true when an authenticated ListBuckets succeeds (so the filer behind
# the gateway is up, not only the listening socket).
s3_ready() {
  curl -fsS -o /dev/null --max-time 3 \
    --aws-sigv4 "aws:amz:$S3_REGION:s3" --user "$S3_ACCESS_KEY:$S3_SECRET_KEY" \
    "http://127.0.0.1:$1/" 2>/dev/null
}

write_env() {
  local state="$1" port="$2"
  cat >"$state/s3.env.tmp" <<ENV
MIRA_S3_ENDPOINT=http://127.0.0.1:$port
AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY
AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY
AWS_REGION=$S3_REGION
ENV
  mv "$state/s3.env.tmp" "$state/s3.env"
}

cmd_start() {
  local state="$1" port="${MIRA_S3_PORT:-8333}"
  [[ "$port" =~ ^[0-9]+$ ]] || die "MIRA_S3_PORT must be a port number, got '$port'"
  need_cmd curl
  mkdir -p "$state"
  state="$(cd "$state" && pwd)"

  if pid_alive "$state/s3.pid" "weed"; then
    local running
    running="$(cat "$state/s3.port" 2>/dev/null || true)"
    [[ "$running" == "$port" ]] \
      || die "an S3 server for $state already runs on port ${running:-?}; stop it first"
    s3_ready "$port" || die "S3 server (pid $(cat "$state/s3.pid")) runs but does not answer on port $port"
    write_env "$state" "$port"
    log "S3 server already running on 127.0.0.1:$port"
    return 0
  fi
  rm -f "$state/s3.pid"
  port_in_use "$port" && die "port $port on 127.0.0.1 is already in use; set MIRA_S3_PORT to another port"

  local weed
  # in a subshell: the tools' variables stay out of the server's environment
  weed="$(use_tools s3 && echo "$MIRA_WEED")"
  [[ -x "$weed" ]] || die "weed binary not found after install"

  cat >"$state/s3-config.json" <<JSON
{"identities":[{"name":"mira","credentials":[{"accessKey":"$S3_ACCESS_KEY","secretKey":"$S3_SECRET_KEY"}],"actions":["Admin","Read","Write","List","Tagging"]}]}
JSON
  mkdir -p "$state/s3-data" "$state/s3-conf"
  local master master_grpc volume volume_grpc filer filer_grpc s3_grpc admin admin_grpc name taken=("$port")
  for name in master master_grpc volume volume_grpc filer filer_grpc s3_grpc admin admin_grpc; do
    taken+=("$(free_port "${taken[@]}")")
    printf -v "$name" '%s' "${taken[-1]}"
  done
  echo "$port" >"$state/s3.port"
  # all ports, so `stop` can remove the unix sockets weed leaves in /tmp (named by port)
  echo "$port $s3_grpc $master $master_grpc $volume $volume_grpc $filer $filer_grpc $admin $admin_grpc" \
    >"$state/s3.ports"
  : >"$state/s3.log"
  log "starting weed mini on 127.0.0.1:$port (data: $state/s3-data)"
  (
    cd "$state/s3-data"
    # -logtostderr: log only to s3.log (not to glog files in /tmp); -config_dir: an empty
    # dir, so no security.toml etc. from the host's ~/.seaweedfs or /etc/seaweedfs is read
    start_daemon "$state/s3.pid" "$state/s3.log" "$weed" -logtostderr -config_dir="$state/s3-conf" mini \
      -dir="$state/s3-data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
      -s3.port="$port" -s3.port.grpc="$s3_grpc" -s3.config="$state/s3-config.json" \
      -s3.port.iceberg=0 -s3.port.lance=0 \
      -master.port="$master" -master.port.grpc="$master_grpc" -master.telemetry=false \
      -volume.port="$volume" -volume.port.grpc="$volume_grpc" \
      -filer.port="$filer" -filer.port.grpc="$filer_grpc" \
      -admin.ui=false -admin.port="$admin" -admin.port.grpc="$admin_grpc" -webdav=false
  )
  local rc=0
  wait_ready "$START_TIMEOUT" 0.2 "$state/s3.pid" "" s3_ready "$port" || rc=$?
  if ((rc == 1)); then
    log_tail "$state/s3.log"
    rm -f "$state/s3.pid"
    die "weed mini exited during start-up (log: $state/s3.log)"
  elif ((rc == 2)); then
    log_tail "$state/s3.log"
    stop_pidfile "$state/s3.pid" "weed mini" weed
    die "S3 did not answer on 127.0.0.1:$port within ${START_TIMEOUT}s (log: $state/s3.log)"
  fi
  write_env "$state" "$port"
  log "S3 ready at http://127.0.0.1:$port; env: $state/s3.env"
}

cmd_stop() {
  local state="$1"
  [[ -d "$state" ]] || return 0
  stop_pidfile "$state/s3.pid" "weed mini" weed
  # weed leaves some of its unix sockets (/tmp/seaweedfs-<component>-<port>.sock) behind
  local p d f
  for p in $(cat "$state/s3.ports" 2>/dev/null || true); do
    [[ "$p" =~ ^[0-9]+$ ]] || continue
    for d in /tmp "${TMPDIR:-/tmp}"; do
      for f in "$d"/seaweedfs-*-"$p".sock; do
        [[ -S "$f" ]] && rm -f "$f"
      done
    done
  done
  rm -f "$state/s3.port" "$state/s3.ports" "$state/s3.env"
}

server_main s3.env "$@"
