# shellcheck shell=bash
# hack/lib.sh - helpers shared by the MIRA test-infrastructure scripts.
#
# Source it from another hack/ script (source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"); it is
# not meant to be run. It sets HACK_DIR (this folder, absolute), fixes where downloaded and
# built tools are cached (outside the checkout, so CI machines build them once and every later
# run takes seconds) and offers small helpers: usage from the script's header, logging, errors,
# locking, installing the test tools, the shared build and tiny models, reading and stopping
# the test servers, picking a free loopback port, waiting for a server or for a process to
# exit, stopping processes recorded in pid files, and counting a self-test's checks.
#
# Environment:
#   MIRA_CACHE    cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/mira)
#   MIRA_VERBOSE  set to 1 to print progress messages on stderr

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MIRA_CACHE="${MIRA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mira}"
export MIRA_CACHE

# usage : print the running script's "# Usage:" header block (up to the next bare "#" line) on
# stderr and exit 2, so a script's help is its doc header and cannot drift from it.
usage() {
  sed -n '/^# Usage:/,/^#$/p' "${BASH_SOURCE[-1]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# log MSG... : progress message on stderr, only when MIRA_VERBOSE=1.
log() {
  if [[ "${MIRA_VERBOSE:-0}" == 1 ]]; then
    printf '[%s] %s\n' "${0##*/}" "$*" >&2
  fi
  return 0
}

# die MSG... : error on stderr, then exit 1.
die() {
  printf '%s: error: %s\n' "${0##*/}" "$*" >&2
  exit 1
}

# need_cmd CMD... : fail unless every command is on PATH.
need_cmd() {
  local c
  for c in "$@"; do
    command -v "$c" >/dev/null 2>&1 || die "required command not found: $c"
  done
}

# use_tools COMPONENT... : install the test tools (hack/install-tools.sh; cached, so seconds
# after the first run) and export their variables (MIRA_WEED, MIRA_HELM, ..., PATH) here.
use_tools() {
  "$HACK_DIR/install-tools.sh" "$@" || return
  eval "$("$HACK_DIR/install-tools.sh" env "$@")"
}

# use_cargo_target : export CARGO_TARGET_DIR, by default $MIRA_CACHE/target: one build outside
# the checkout, shared by the tests, the benches, the demo and the tiny-models generator.
use_cargo_target() {
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$MIRA_CACHE/target}"
}

# newest_bin DIR NAME : print the newest executable DIR/NAME-<hash> (a bench binary cargo built;
# its name carries a hash that changes with the build), or fail when there is none.
newest_bin() {
  local bin
  bin="$(find "$1" -maxdepth 1 -type f -executable -name "$2-*" -printf '%T@ %p\n' |
    sort -rn | head -n 1 | cut -d' ' -f2-)"
  [[ -n "$bin" ]] || die "no $2 binary built in $1"
  echo "$bin"
}

# score_bench : build scorer-runner's `score` bench (see its header) and print its binary. The
# release profile, as deployed, without the `llm` feature: the hashed path needs no model, and
# leaving mistral.rs out keeps the first release build to about 14 minutes on 2 cores (cached
# after). Every phase runs in this one binary, so the ratios between phases are fair.
score_bench() {
  cargo build --release -p scorer-runner --no-default-features --bench score --quiet
  newest_bin "$CARGO_TARGET_DIR/release/deps" score
}

# generated_score_corpus MEGABYTES : build the score bench (sets `bench`), generate its corpus of
# that size once (cached under $MIRA_CACHE, sets `dir`), train a student on it afresh (seconds:
# one from an older build may use another featurizer or artefact format) and print its size.
# Run from the repository root, with use_cargo_target.
generated_score_corpus() {
  bench="$(score_bench)"
  dir="$MIRA_CACHE/bench/score-${1}mb"
  cached_corpus "$bench" "$dir" generate "$1"
  "$bench" train "$dir"
  echo "corpus: $(corpus_size "$dir"); $(nproc) cores"
}

# cached_corpus BENCH DIR PHASE [ARG...] : unless DIR holds a finished corpus (raw-bytes is
# written last), make it afresh with the score bench BENCH's PHASE (generate, import) into DIR.
cached_corpus() {
  local bench="$1" dir="$2" phase="$3"
  shift 3
  if [[ ! -f "$dir/raw-bytes" ]]; then
    rm -rf "$dir" && mkdir -p "$dir"
    "$bench" "$phase" "$dir" "$@"
  fi
}

# corpus_size DIR : a score bench corpus' size, compressed and as JSON.
corpus_size() {
  echo "$(du -sh "$1/corpus" | cut -f1) of JSONL.zst, $(($(cat "$1/raw-bytes") / 1000000)) MB of JSON"
}

# records_rate LINE : the records_per_s of a score bench phase's output line.
records_rate() { grep -o 'records_per_s=[0-9]*' <<<"$1" | cut -d= -f2; }

# use_tiny_models : generate the tiny random-weight models into $MIRA_CACHE/tiny-models (once:
# hack/tiny-models.sh), and keep the hub cache that mistral.rs creates even for local models
# (HF_HOME) under the cache too, unless set, out of the user's home.
use_tiny_models() {
  "$HACK_DIR/tiny-models.sh" "$MIRA_CACHE/tiny-models" >/dev/null
  export HF_HOME="${HF_HOME:-$MIRA_CACHE/hf-home}"
}

# run_logged LOGFILE CMD... : run CMD with all output into LOGFILE; on failure print
# the log's tail and the log's path, and return the command's status.
run_logged() {
  local logfile="$1" rc=0
  shift
  mkdir -p "$(dirname "$logfile")"
  "$@" >>"$logfile" 2>&1 || rc=$?
  if ((rc != 0)); then
    printf '%s: error: command failed (exit %d): %s\n' "${0##*/}" "$rc" "$*" >&2
    printf -- '--- last lines of %s ---\n' "$logfile" >&2
    tail -n 40 "$logfile" >&2 || true
    printf -- '---\n' >&2
  fi
  return "$rc"
}

# with_lock NAME CMD... : run CMD while holding an exclusive lock under the cache, so
# parallel runs (CI jobs on one machine) do not install the same tool twice.
with_lock() {
  local name="$1" fd
  shift
  mkdir -p "$MIRA_CACHE/locks"
  exec {fd}>"$MIRA_CACHE/locks/$name.lock"
  flock "$fd" || die "cannot lock $MIRA_CACHE/locks/$name.lock"
  local rc=0
  "$@" || rc=$?
  exec {fd}>&-
  return "$rc"
}

# port_in_use PORT : true if something listens on 127.0.0.1:PORT.
port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# free_port [TAKEN...] : print a TCP port that is free on 127.0.0.1 right now and is none of
# TAKEN (ports already chosen for servers not yet started). It lies below the kernel's
# ephemeral range: a port from that range can be taken, before its server binds it, by any
# outgoing connection (the API server's own to etcd, say), which made servers fail to start
# now and then.
free_port() {
  local low port i
  low="$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true)"
  [[ "$low" =~ ^[0-9]+$ ]] && ((low > 11000)) || low=32768
  for ((i = 0; i < 200; i++)); do
    port=$((10000 + RANDOM % (low - 10000)))
    if [[ " $* " != *" $port "* ]] && ! port_in_use "$port"; then
      echo "$port"
      return 0
    fi
  done
  die "could not find a free port on 127.0.0.1"
}

# pid_matches PID MATCH : true if PID is alive and (when MATCH is non-empty) its
# command line contains MATCH, so a recycled pid is never mistaken for ours.
pid_matches() {
  local pid="$1" match="${2:-}"
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  [[ -z "$match" ]] && return 0
  [[ -r "/proc/$pid/cmdline" ]] || return 0
  # Read into a variable, not piped into `grep -q`: under pipefail, grep quitting at the first
  # match can fail the pipeline with the writer's SIGPIPE.
  local cmdline
  cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
  [[ "$cmdline" == *"$match"* ]]
}

# pid_alive PIDFILE [MATCH] : true if the pid file names a live process (see pid_matches).
pid_alive() {
  [[ -f "$1" ]] || return 1
  pid_matches "$(cat "$1" 2>/dev/null || true)" "${2:-}"
}

# wait_exit PID : true once PID has exited, false if it still runs after 10 s (polled every
# 0.1 s).
wait_exit() {
  local i
  for ((i = 0; i < 100; i++)); do
    kill -0 "$1" 2>/dev/null || return 0
    sleep 0.1
  done
  ! kill -0 "$1" 2>/dev/null
}

# wait_ready TIMEOUT INTERVAL PIDFILE MATCH CMD... : poll CMD every INTERVAL seconds until it
# succeeds. Returns 1 as soon as the server in PIDFILE has exited (see pid_alive), 2 after
# TIMEOUT seconds: a start-up stops waiting once its server cannot come up any more, and can
# say which of the two happened.
wait_ready() {
  local timeout="$1" interval="$2" pidfile="$3" match="$4"
  shift 4
  local deadline=$((SECONDS + timeout))
  until "$@"; do
    pid_alive "$pidfile" "$match" || return 1
    ((SECONDS < deadline)) || return 2
    sleep "$interval"
  done
}

# stop_pidfile PIDFILE [NAME] [MATCH] : stop the process named in PIDFILE (TERM, then
# KILL after 10 s) and remove the file. Quiet and successful if it is not running.
stop_pidfile() {
  local pidfile="$1" name="${2:-process}" match="${3:-}" pid
  [[ -f "$pidfile" ]] || return 0
  pid="$(cat "$pidfile" 2>/dev/null || true)"
  if pid_matches "$pid" "$match"; then
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_exit "$pid"; then
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.2
    fi
  fi
  rm -f "$pidfile"
}

# start_daemon PIDFILE LOGFILE CMD... : start CMD detached (own session, stdin from
# /dev/null, output to LOGFILE) and record its pid. Returns once the child runs CMD: until
# the forked shell has exec'd, its command line is still this script's, and pid_alive
# checking by command line right after a start took a starting server for a dead one.
start_daemon() {
  local pidfile="$1" logfile="$2" pid i
  shift 2
  setsid "$@" </dev/null >>"$logfile" 2>&1 &
  pid=$!
  for ((i = 0; i < 200; i++)); do
    pid_matches "$pid" "$1" || ! kill -0 "$pid" 2>/dev/null && break
    sleep 0.05
  done
  echo "$pid" >"$pidfile"
}

# log_tail FILE : print the last lines of FILE on stderr (for error reports).
log_tail() {
  [[ -f "$1" ]] || return 0
  printf -- '--- last lines of %s ---\n' "$1" >&2
  tail -n 30 "$1" >&2 || true
  printf -- '---\n' >&2
}

# print_export NAME=VALUE... : each as an `export NAME=VALUE` line with the value shell-quoted,
# for the `env` commands whose output callers eval (eval "$(hack/install-tools.sh env)").
print_export() {
  local kv
  for kv in "$@"; do
    printf 'export %s=%q\n' "${kv%%=*}" "${kv#*=}"
  done
}

# print_exports FILE: print_export of FILE's KEY=VALUE lines, for the `env` commands of the
# server scripts (eval "$(hack/s3-server.sh env DIR)").
print_exports() {
  local line
  while IFS= read -r line; do
    [[ -n "$line" ]] && print_export "$line"
  done <"$1"
}

# source_env FILE... : read KEY=VALUE files into this shell, exported: the env files that the
# test servers' `start` writes (s3.env, kube.env).
source_env() {
  local f
  set -a
  for f in "$@"; do
    # shellcheck disable=SC1090  # written at run time
    source "$f"
  done
  set +a
}

# stop_test_servers STATE_DIR : stop the S3 server and the control plane whose state is in
# STATE_DIR (hack/s3-server.sh, hack/kube-up.sh), quietly and never failing: for EXIT traps.
stop_test_servers() {
  "$HACK_DIR/s3-server.sh" stop "$1" >/dev/null 2>&1 || true
  "$HACK_DIR/kube-up.sh" stop "$1" >/dev/null 2>&1 || true
}

# keep_logs STATE_DIR : after a failed run, copy every log under STATE_DIR (the test servers',
# the demo's Jobs') into a folder of its own under $MIRA_TEST_LOGS (default: the cache's
# test-logs/, the last 10 runs kept), say where, and show the last lines of every server whose
# pid file names a process that is no longer running: the one that failed. Call it before
# stop_test_servers, which removes the pid files.
keep_logs() {
  local state="$1" base dest pidfile
  base="${MIRA_TEST_LOGS:-$MIRA_CACHE/test-logs}"
  dest="$base/$(date +%Y%m%d-%H%M%S)-$$"
  mkdir -p "$dest"
  (cd "$state" && find . -name '*.log' -type f -exec cp --parents {} "$dest" \;) || true
  while IFS= read -r pidfile; do
    pid_alive "$pidfile" || log_tail "${pidfile%.pid}.log"
  done < <(find "$state" -name '*.pid' -type f)
  printf 'logs of this run kept in %s\n' "$dest" >&2
  find "$base" -mindepth 1 -maxdepth 1 -type d -printf '%T@ %p\n' | sort -rn | tail -n +11 | cut -d' ' -f2- |
    xargs -r rm -rf
}

# use_test_state NAME : set `state` to a new temporary directory for test servers and, when the
# script exits, keep its logs if it failed (keep_logs), stop its servers and remove it.
use_test_state() {
  state="$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")"
  trap end_test_state EXIT
}
end_test_state() {
  local rc=$?
  ((rc == 0)) || keep_logs "$state"
  stop_test_servers "$state"
  rm -rf "$state"
}

# The checks of the self-test scripts (chart-check.sh, process-kubelet-selftest.sh): each prints
# `ok: NAME` or `FAIL: NAME` and is counted; checks_done ends the script with the totals.
checks_passed=0
checks_failed=0

# ok NAME... / bad NAME... : count a check the script decided itself as passed / failed.
ok() {
  printf 'ok: %s\n' "$*"
  checks_passed=$((checks_passed + 1))
}
bad() {
  printf 'FAIL: %s\n' "$*"
  checks_failed=$((checks_failed + 1))
}

# check NAME CMD... : run CMD and count it as passed or failed. With CHECK_OUTPUT naming a file,
# CMD's output goes there and is shown (its last 20 lines, indented) under a failure only.
check() {
  local name="$1" rc=0
  shift
  if [[ -n "${CHECK_OUTPUT:-}" ]]; then
    "$@" >"$CHECK_OUTPUT" 2>&1 || rc=$?
  else
    "$@" || rc=$?
  fi
  if ((rc == 0)); then
    ok "$name"
  else
    bad "$name"
    [[ -z "${CHECK_OUTPUT:-}" ]] || sed 's/^/  /' "$CHECK_OUTPUT" | tail -n 20
  fi
  return 0
}

# checks_done : print the totals; false when a check failed, so that as a script's last
# command it makes the exit status 1.
checks_done() {
  printf '%d passed, %d failed\n' "$checks_passed" "$checks_failed"
  ((checks_failed == 0))
}

# server_main ENV_FILE start|stop|env STATE_DIR : the command dispatch of the test-server
# scripts, which define cmd_start and cmd_stop; `env` prints the exports that `start` wrote
# to STATE_DIR/ENV_FILE, anything else prints the script's usage.
server_main() {
  local env_file="$1"
  shift
  (($# == 2)) || usage
  case "$1" in
    start) cmd_start "$2" ;;
    stop) cmd_stop "$2" ;;
    env)
      [[ -f "$2/$env_file" ]] || die "$2/$env_file not found; run: $0 start $2"
      print_exports "$2/$env_file"
      ;;
    *) usage ;;
  esac
}
