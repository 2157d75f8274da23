#!/usr/bin/env bash
# hack/process-kubelet-selftest.sh - check hack/process-kubelet.py against a real control plane.
#
# Usage:
#   hack/process-kubelet-selftest.sh            exit 0 when every check passes, 1 otherwise
#
# Starts its own cluster (hack/kube-up.sh) in a temp dir, runs the process kubelet on it, and
# checks through the real Job controller (backoffLimit 0):
#   1. a Job whose container runs `sh -c "echo hi; echo <marker> >&2; exit 3"` becomes Failed,
#      and its Pod is Failed with exit code 3, reason Error and the stderr line as message;
#   2. a Job whose container succeeds becomes Complete, and its Pod shows exit code 0;
#   3. a Job without a command runs the image's entrypoint from --bin-dir, with a ConfigMap
#      volume (argument rewritten to the local file), env from configMapKeyRef, secretKeyRef,
#      fieldRef and MIRA_WORKER_ID = the Pod's name;
#   4. no more than --max-running processes run at once; deleting a running Job's Pod kills
#      its process;
#   5. a Pod left Running by a killed kubelet is reported Failed by the next one;
#   6. the kubelet logs API errors, keeps going, and runs Pods again once the API answers;
#   7. SIGTERM stops it with exit status 0.
# Stops everything it started and removes the temp dir (MIRA_KEEP_STATE=1 keeps it).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_cmd python3 /usr/bin/kubectl

state="$(mktemp -d "${TMPDIR:-/tmp}/mira-kubelet-selftest.XXXXXX")"
kubelet_pid=""
cleanup() {
  local rc=$?
  if [[ -n "$kubelet_pid" ]] && kill -0 "$kubelet_pid" 2>/dev/null; then
    kill -TERM "$kubelet_pid" 2>/dev/null || true
    wait "$kubelet_pid" 2>/dev/null || true
  fi
  "$HACK_DIR/kube-up.sh" stop "$state" >/dev/null 2>&1 || true
  if ((rc != 0)) && [[ -f "$state/kubelet.log" ]]; then
    log_tail "$state/kubelet.log"
  fi
  if [[ "${MIRA_KEEP_STATE:-0}" == 1 ]]; then
    printf 'state kept in %s\n' "$state" >&2
  else
    rm -rf "$state"
  fi
}
trap cleanup EXIT

k() { /usr/bin/kubectl "$@"; }

# wait_jsonpath TIMEOUT KIND/NAME JSONPATH EXPECTED : poll until the field equals EXPECTED.
wait_jsonpath() {
  local timeout="$1" obj="$2" path="$3" want="$4" got=""
  local deadline=$((SECONDS + timeout))
  while ((SECONDS < deadline)); do
    got="$(k get "$obj" -o "jsonpath=$path" 2>/dev/null || true)"
    [[ "$got" == "$want" ]] && return 0
    sleep 0.3
  done
  printf '  %s %s: want %q, got %q\n' "$obj" "$path" "$want" "$got" >&2
  return 1
}

# job_pod JOB : the name of the Job's (first) Pod.
job_pod() {
  k get pods -l "job-name=$1" -o 'jsonpath={.items[0].metadata.name}' 2>/dev/null || true
}

# running_pod JOB : wait for the Job's Pod to be Running, and set pod to its name; false when it
# does not run within 30 s of the Job having an active Pod.
running_pod() {
  wait_jsonpath 60 "job/$1" '{.status.active}' 1 || true
  pod="$(job_pod "$1")"
  wait_jsonpath 30 "pod/$pod" '{.status.phase}' Running
}

# job_head NAME : the YAML of a Job (backoffLimit 0: its Pod failing fails the Job) up to its Pod
# template's spec, restartPolicy Never; the caller's lines for that spec (containers, volumes)
# follow, indented by 6.
job_head() {
  cat <<YAML
apiVersion: batch/v1
kind: Job
metadata: {name: $1}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
YAML
}

printf '==> control plane (%s)\n' "$state"
"$HACK_DIR/kube-up.sh" start "$state"
export KUBECONFIG="$state/kubeconfig"

mkdir -p "$state/bin" "$state/logs"
# the stand-in for an image's entrypoint: prints what it was given
cat >"$state/bin/selftest-entrypoint" <<'SH'
#!/bin/sh
set -e
[ "$1" = run ] && [ "$2" = --plan ]
printf 'plan=%s\n' "$(cat "$3")"
printf 'inline=%s secret=%s pod=%s worker=%s\n' "$MIRA_PLAN" "$TOKEN" "$POD_NAME" "$MIRA_WORKER_ID"
SH
chmod +x "$state/bin/selftest-entrypoint"

cp "$KUBECONFIG" "$state/kubelet.kubeconfig"
start_kubelet() {
  python3 "$HACK_DIR/process-kubelet.py" --kubeconfig "$state/kubelet.kubeconfig" --log-dir "$state/logs" \
    --bin-dir "$state/bin" --work-dir "$state/work" --max-running 2 --kill-grace 2 >>"$state/kubelet.log" 2>&1 &
  kubelet_pid=$!
}
start_kubelet

marker="selftest-marker-$RANDOM"
k apply -f - >/dev/null <<YAML
apiVersion: v1
kind: ConfigMap
metadata: {name: selftest-plan}
data: {plan.json: '{"step":"run"}'}
---
apiVersion: v1
kind: Secret
metadata: {name: selftest-secret}
stringData: {token: s3cr3t}
---
$(job_head fails)
      containers:
      - name: main
        image: busybox
        command: [sh, -c, "echo hi; echo $marker >&2; exit 3"]
---
$(job_head succeeds)
      containers:
      - name: main
        image: busybox
        command: [sh, -c, "echo hello"]
---
$(job_head entrypoint)
      containers:
      - name: main
        image: example.org/mira/selftest-entrypoint:dev
        args: [run, --plan, /etc/mira/plan.json]
        env:
        - {name: MIRA_PLAN, valueFrom: {configMapKeyRef: {name: selftest-plan, key: plan.json}}}
        - {name: TOKEN, valueFrom: {secretKeyRef: {name: selftest-secret, key: token}}}
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        volumeMounts: [{name: plan, mountPath: /etc/mira, readOnly: true}]
      volumes: [{name: plan, configMap: {name: selftest-plan}}]
YAML

printf '==> failing and succeeding Jobs\n'
check "failing Job becomes Failed (BackoffLimitExceeded)" \
  wait_jsonpath 60 job/fails '{.status.conditions[?(@.type=="Failed")].reason}' BackoffLimitExceeded
pod="$(job_pod fails)"
check "failing Pod is Failed" wait_jsonpath 5 "pod/$pod" '{.status.phase}' Failed
check "failing Pod's exit code is 3" \
  wait_jsonpath 5 "pod/$pod" '{.status.containerStatuses[0].state.terminated.exitCode}' 3
check "failing Pod's reason is Error" \
  wait_jsonpath 5 "pod/$pod" '{.status.containerStatuses[0].state.terminated.reason}' Error
check "failing Pod's message is its stderr" \
  wait_jsonpath 5 "pod/$pod" '{.status.containerStatuses[0].state.terminated.message}' "$marker"
check "failing Pod's log has its stdout" grep -qx hi "$state/logs/default_$pod.log"

check "succeeding Job becomes Complete" \
  wait_jsonpath 60 job/succeeds '{.status.conditions[?(@.type=="Complete")].status}' True
pod="$(job_pod succeeds)"
check "succeeding Pod is Succeeded with exit code 0 (Completed)" \
  wait_jsonpath 5 "pod/$pod" '{.status.phase} {.status.containerStatuses[0].state.terminated.exitCode} {.status.containerStatuses[0].state.terminated.reason}' \
  "Succeeded 0 Completed"

printf '==> at most --max-running (2) processes at once\n'
for i in 1 2 3; do
  k apply -f - >/dev/null <<YAML
$(job_head burst-$i)
      containers: [{name: main, image: busybox, command: [sleep, "1"]}]
YAML
done
for i in 1 2 3; do
  check "burst-$i becomes Complete" \
    wait_jsonpath 60 "job/burst-$i" '{.status.conditions[?(@.type=="Complete")].status}' True
done
# the kubelet's log, in order: "started pid" and "pid N exited" lines
most="$(awk '/: started pid /{n++; if (n > m) m = n} / exited with /{n--} END{print m+0}' "$state/kubelet.log")"
check "at most 2 processes ran at once, and 2 did (got $most)" test "$most" = 2

printf '==> entrypoint, volumes and env\n'
check "entrypoint Job becomes Complete" \
  wait_jsonpath 60 job/entrypoint '{.status.conditions[?(@.type=="Complete")].status}' True
pod="$(job_pod entrypoint)"
check "plan file read through the rewritten mount path" \
  grep -qxF 'plan={"step":"run"}' "$state/logs/default_$pod.log"
check "env from ConfigMap, Secret, fieldRef and MIRA_WORKER_ID" \
  grep -qxF "inline={\"step\":\"run\"} secret=s3cr3t pod=$pod worker=$pod" "$state/logs/default_$pod.log"

printf '==> deleting a running Pod kills its process\n'
k create job sleeper --image=busybox -- sleep 300 >/dev/null
if running_pod sleeper; then
  cid="$(k get "pod/$pod" -o 'jsonpath={.status.containerStatuses[0].containerID}')"
  pid="${cid#process://}"
  if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
    k delete job sleeper --wait=false >/dev/null
    k delete pod "$pod" --wait=false >/dev/null 2>&1 || true
    check "process of the deleted Pod is gone" wait_exit "$pid"
  else
    bad "Running Pod names a live process (containerID $cid)"
  fi
else
  bad "sleeper Pod becomes Running"
fi

printf '==> a restarted kubelet fails the Pods its predecessor left Running\n'
k apply -f - >/dev/null <<YAML
$(job_head orphan)
      containers: [{name: main, image: busybox, command: [sleep, "300"]}]
YAML
if running_pod orphan; then
  cid="$(k get "pod/$pod" -o 'jsonpath={.status.containerStatuses[0].containerID}')"
  kill -KILL "$kubelet_pid"
  wait "$kubelet_pid" 2>/dev/null || true
  pid="${cid#process://}"
  if [[ "$pid" =~ ^[0-9]+$ ]]; then
    kill -KILL "$pid" 2>/dev/null || true   # its own session: not killed with it
  fi
  start_kubelet
  check "orphaned Pod is reported Failed with exit code 137" \
    wait_jsonpath 30 "pod/$pod" '{.status.phase} {.status.containerStatuses[0].state.terminated.exitCode}' "Failed 137"
  check "its Job becomes Failed" \
    wait_jsonpath 30 job/orphan '{.status.conditions[?(@.type=="Failed")].status}' True
else
  bad "orphan Pod becomes Running"
fi

printf '==> API server unreachable for a while\n'
# the kubelet's kubeconfig points at a closed port for 3 s: every kubectl call fails
errors_before="$(grep -c ' ERROR ' "$state/kubelet.log" || true)"
sed 's|server: .*|server: https://127.0.0.1:1|' "$KUBECONFIG" >"$state/kubelet.kubeconfig.tmp"
mv "$state/kubelet.kubeconfig.tmp" "$state/kubelet.kubeconfig"
sleep 3
cp "$KUBECONFIG" "$state/kubelet.kubeconfig.tmp"
mv "$state/kubelet.kubeconfig.tmp" "$state/kubelet.kubeconfig"
errors_after="$(grep -c ' ERROR ' "$state/kubelet.log" || true)"
check "kubelet logged the API errors" test "$errors_after" -gt "$errors_before"
check "kubelet still runs after the errors" kill -0 "$kubelet_pid"
k create job after-outage --image=busybox -- sh -c 'echo back' >/dev/null
check "a Job created after the errors becomes Complete" \
  wait_jsonpath 60 job/after-outage '{.status.conditions[?(@.type=="Complete")].status}' True

printf '==> SIGTERM\n'
kill -TERM "$kubelet_pid"
check "kubelet exits on SIGTERM" wait_exit "$kubelet_pid"
rc=0
wait "$kubelet_pid" || rc=$?
kubelet_pid=""
check "kubelet exit status is 0" test "$rc" = 0

checks_done
