#!/usr/bin/env bash
# hack/chart-check.sh - check the Helm chart charts/mira-operator.
#
# Usage:
#   hack/chart-check.sh     exit 0 when every check passes, 1 otherwise
#
# Checks: `helm lint --strict` with the default values and with every option switched; `helm
# template` renders each of those value sets; the values schema rejects unknown keys and a
# replicated operator without leader election; the chart's CRD copies equal crds/*.yaml (when
# crds/ has files; hack/sync-chart-crds.sh --check); and, when KUBECONFIG names a reachable API
# server (hack/kube-up.sh), the rendered objects pass `kubectl apply --dry-run=server` (the
# ServiceMonitor only when its CRD is there).
# helm comes from hack/install-tools.sh (installed on first use).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$HACK_DIR/.."

use_tools helm
chart=charts/mira-operator
tmp="$(mktemp -d "${TMPDIR:-/tmp}/mira-chart-check.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

CHECK_OUTPUT="$tmp/out"   # check (lib.sh) runs each command quietly, shows its output on failure
fails() { ! "$@"; }   # fails CMD... : true when CMD fails

# every option away from its default
all_options=(
  --set replicaCount=2 --set leaderElection.leaseName=mira-test
  --set scorerRunner.image.cuda=true --set scorerRunner.image.tag=dev --set image.tag=dev
  --set image.pullPolicy=Always --set 'imagePullSecrets[0]=regcred'
  --set storage.s3.endpoint=http://s3.example.test:8333 --set storage.s3.region=eu-west-1
  --set storage.credentialsSecret=s3-keys --set rbac.readSecrets=true --set 'rbac.secretNames[0]=s3-keys'
  --set metrics.serviceMonitor.enabled=true --set metrics.serviceMonitor.labels.release=prom
  --set crds.keep=false --set serviceAccount.name=mira --set logLevel=debug
  --set 'extraEnv[0].name=FOO' --set 'extraEnv[0].value=bar' --set 'extraArgs[0]=--help'
  --set 'tolerations[0].key=dedicated' --set 'tolerations[0].operator=Exists'
  --set nodeSelector.pool=system --set podAnnotations.a=b --set podLabels.c=d
  --set priorityClassName=system-cluster-critical --set watchNamespace=default
  --set 'policy.allowedImages[0]=registry.example.test/mira/*' --set 'policy.allowedServiceAccounts[0]=mira-worker'
  --set 'policy.allowedEndpointHosts[0]=*.models.svc.cluster.local' --set 'policy.allowedEndpointHosts[1]=api.example.test'
)
no_crds_no_le=(--set crds.enabled=false --set leaderElection.enabled=false
  --set metrics.service.enabled=false --set serviceAccount.create=false --set rbac.create=false)

check "helm lint --strict (defaults)" helm lint --strict "$chart"
check "helm lint --strict (every option set)" helm lint --strict "$chart" "${all_options[@]}"
check "helm template (defaults)" helm template mira "$chart" --namespace default
check "helm template (every option set)" helm template mira "$chart" "${all_options[@]}"
check "helm template (no CRDs, no leader election, no RBAC)" helm template mira "$chart" "${no_crds_no_le[@]}"
check "schema rejects an unknown key" fails helm template mira "$chart" --set no.such.key=1
check "schema rejects an unknown image key" fails helm template mira "$chart" --set image.tagg=1
check "replicas > 1 need leader election" \
  fails helm template mira "$chart" --set replicaCount=2 --set leaderElection.enabled=false
check "defaults: hardened container securityContext" bash -c \
  "helm template mira '$chart' | grep -q 'readOnlyRootFilesystem: true' && helm template mira '$chart' | grep -q 'allowPrivilegeEscalation: false'"
check "defaults: Deployment strategy Recreate" bash -c "helm template mira '$chart' | grep -q 'type: Recreate'"
check "watchNamespace: a Role and RoleBinding in that namespace, no ClusterRole" bash -c \
  "out=\$(helm template mira '$chart' --set watchNamespace=team-a -s templates/clusterrole.yaml) &&
   grep -q '^kind: Role\$' <<<\"\$out\" && grep -q '^kind: RoleBinding\$' <<<\"\$out\" &&
   ! grep -q ClusterRole <<<\"\$out\" && grep -q 'namespace: team-a' <<<\"\$out\""
check "policy: the allowlists reach the operator's environment" bash -c \
  "helm template mira '$chart' --set 'policy.allowedEndpointHosts={a.example.test,*.svc}' |
   grep -A1 MIRA_ALLOWED_ENDPOINT_HOSTS | grep -q 'value: \"a.example.test,\\*.svc\"'"
check "defaults: no access to Secrets" bash -c \
  "! helm template mira '$chart' -s templates/clusterrole.yaml | grep -q 'secrets'"
check "rbac.secretNames: get on those Secrets only" bash -c \
  "helm template mira '$chart' -s templates/clusterrole.yaml --set rbac.readSecrets=true --set 'rbac.secretNames={s3-keys,other}' |
   grep -A3 'resources: \[\"secrets\"\]' | grep -q 'resourceNames: \[\"s3-keys\",\"other\"\]'"

shopt -s nullglob
crds=(crds/*.yaml)
if ((${#crds[@]})); then
  check "chart CRDs equal crds/ (hack/sync-chart-crds.sh --check)" "$HACK_DIR/sync-chart-crds.sh" --check
  check "CRDs render with the keep annotation" bash -c \
    "[ \"\$(helm template mira '$chart' | grep -c 'helm.sh/resource-policy: keep')\" = ${#crds[@]} ]"
  check "no keep annotation with crds.keep=false" bash -c \
    "! helm template mira '$chart' --set crds.keep=false | grep -q 'helm.sh/resource-policy'"
else
  printf 'skipped: crds/ has no files yet (generate: mira crd --out-dir crds; then hack/sync-chart-crds.sh)\n'
fi

if [[ -n "${KUBECONFIG:-}" ]] && /usr/bin/kubectl get --raw /readyz >/dev/null 2>&1; then
  # --validate=false: kubectl's client-side check uses the server's OpenAPI, which lacks
  # `x-kubernetes-validations` before 1.23 (the test server is 1.20); the server still validates
  # every object itself, and ignores the CEL rules it does not know.
  check "server dry-run (defaults)" bash -c \
    "helm template mira '$chart' --namespace default | /usr/bin/kubectl apply --validate=false --dry-run=server -f -"
  sm=()
  /usr/bin/kubectl get crd servicemonitors.monitoring.coreos.com >/dev/null 2>&1 \
    || sm=(--set metrics.serviceMonitor.enabled=false)
  check "server dry-run (every option set)" bash -c \
    "helm template mira '$chart' --namespace default \"\$@\" | /usr/bin/kubectl apply --validate=false --dry-run=server -f -" \
    _ "${all_options[@]}" "${sm[@]}"
else
  printf 'skipped: server dry-run (no reachable API server in KUBECONFIG)\n'
fi

checks_done
