#!/usr/bin/env bash
# hack/kube-up-selftest.sh - start and stop the test control plane (hack/kube-up.sh) several
# times in a row, as CI does once per run, and check that every start-up comes up.
#
# Usage:
#   hack/kube-up-selftest.sh [N]   N start-ups (default 5); exit 0 when every one is ready
#
# Each start must answer `kubectl get namespace default` and have the Job controller running
# (its default service account); the number of etcd attempts each start needed is printed, so a
# start-up that only passed on a retry shows. On a failure the kept logs are named.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_cmd /usr/bin/kubectl
runs="${1:-5}"
[[ "$runs" =~ ^[0-9]+$ ]] || usage

use_test_state mira-kube-up-selftest

for ((i = 1; i <= runs; i++)); do
  rm -f "$state"/kube/etcd.attempt*.log
  start=$SECONDS
  check "start-up $i of $runs comes up" "$HACK_DIR/kube-up.sh" start "$state"
  retries="$(find "$state/kube" -name 'etcd.attempt*.log' | wc -l)"
  check "start-up $i answers (in $((SECONDS - start)) s, $((retries + 1)) etcd attempt(s))" \
    env KUBECONFIG="$state/kubeconfig" /usr/bin/kubectl get serviceaccount default -o name
  "$HACK_DIR/kube-up.sh" stop "$state"
done
checks_done
