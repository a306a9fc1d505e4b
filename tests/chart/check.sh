#!/usr/bin/env bash
# The chart without a cluster (tests/run-all.sh: "chart: lint, render, schema, alert rules"):
#   1. helm lint --strict, with the default values and with every optional part on;
#   2. helm template of the documented combinations (defaults, URL mode, monitoring on with
#      ServiceMonitors and with PodMonitors, two operator replicas, NetworkPolicies on, helm test
#      on), checking which objects appear and which do not, and key fields of them;
#   3. values.schema.json: a value outside its set, a misspelt key, a bad port and a bad duration
#      are refused with a message naming the value; values the binaries accept are let through;
#      every value of values.yaml is in the schema and the other way round;
#   4. the PrometheusRule's rules: promtool check rules, then promtool test rules with the recorded
#      series of tests/chart/alerts_test.yaml; every alert has a runbook_url into docs/alerts.md,
#      which has a section for it;
#   5. the values table of charts/staticpodset/README.md is what values.yaml's comments give;
#   6. every combination of 2., applied to the cluster's API server as a server-side dry run, with
#      the prometheus-operator CRDs installed from that project's Go module (offline: the Go
#      module proxy), so the API server validates every object the chart renders.
# helm and promtool come from PATH (run-all.sh adds the cache's tools after cluster up; promtool
# is Debian's prometheus package, which host-deps.sh installs); a missing one fails the suite.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CHART=$ROOT/charts/staticpodset
HERE=$ROOT/tests/chart
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok: $*"; }
bad() { failed=$((failed + 1)); echo "FAIL: $*" >&2; }

for tool in helm promtool python3; do
  command -v "$tool" >/dev/null || { echo "FAIL: $tool not found on PATH (see this script's header)" >&2; exit 1; }
done
python3 -c 'import yaml' 2>/dev/null || { echo "FAIL: python3 has no yaml module (Debian python3-yaml)" >&2; exit 1; }

# The chart asks for Kubernetes >= 1.33; without a cluster helm assumes an older one.
KUBE=(--kube-version 1.33.0)
ALL_ON=(--set metrics.serviceMonitor.enabled=true --set metrics.prometheusRule.enabled=true
        --set metrics.grafanaDashboard.enabled=true --set networkPolicy.enabled=true
        --set helmTest.enabled=true --set operator.replicas=2 --set agent.staticPodURL.enabled=true)
M="python3 $HERE/manifests.py"

# render NAME ARGS...: helm template into $WORK/NAME.yaml and its object list into $WORK/NAME.objects.
render() {
  local name=$1; shift
  if helm template sps "$CHART" -n staticpodset-system "${KUBE[@]}" "$@" >"$WORK/$name.yaml" 2>"$WORK/$name.err"; then
    $M objects <"$WORK/$name.yaml" >"$WORK/$name.objects"
  else
    bad "helm template ($name) failed: $(cat "$WORK/$name.err")"
    : >"$WORK/$name.objects"
  fi
}
# has NAME OBJECT... / lacks NAME OBJECT...: objects ("Kind/name") in / not in a rendering.
has() {
  local name=$1 o; shift
  for o in "$@"; do
    if grep -qxF "$o" "$WORK/$name.objects"; then ok "$name: renders $o"; else bad "$name: no $o"; fi
  done
}
lacks() {
  local name=$1 o; shift
  for o in "$@"; do
    if grep -qxF "$o" "$WORK/$name.objects"; then bad "$name: renders $o, which it must not"; else ok "$name: no $o"; fi
  done
}
# field NAME KIND OBJECT PATH JSON: a field of a rendered object, compared as JSON.
field() {
  local got
  got=$($M get "$2" "$3" "$4" <"$WORK/$1.yaml" 2>&1) || true
  if [[ $got == "$5" ]]; then ok "$1: $2/$3 $4 = $5"; else bad "$1: $2/$3 $4 is $got, expected $5"; fi
}

echo "--- 1. lint"
for args in "" "${ALL_ON[*]}" "--set metrics.podMonitor.enabled=true --set metrics.prometheusRule.enabled=true"; do
  # shellcheck disable=SC2086  # the --set words are meant to split
  if out=$(helm lint --strict "$CHART" "${KUBE[@]}" $args 2>&1); then ok "helm lint --strict ${args:-(defaults)}"
  else bad "helm lint --strict ${args:-(defaults)}: $out"; fi
done

echo "--- 2. render"
OPTIONAL=(ServiceMonitor/sps-staticpodset-operator ServiceMonitor/sps-staticpodset-agent
          PodMonitor/sps-staticpodset-operator PodMonitor/sps-staticpodset-agent
          PrometheusRule/sps-staticpodset ConfigMap/sps-staticpodset-dashboard
          NetworkPolicy/sps-staticpodset-operator NetworkPolicy/sps-staticpodset-agent
          PodDisruptionBudget/sps-staticpodset-operator Pod/sps-staticpodset-test-readyz
          Service/sps-staticpodset-agent-metrics)
render defaults
has defaults Deployment/sps-staticpodset-operator DaemonSet/sps-staticpodset-agent \
  Service/sps-staticpodset-operator-metrics Namespace/staticpodset-system-config
lacks defaults "${OPTIONAL[@]}"
field defaults Deployment sps-staticpodset-operator spec.template.spec.affinity null

render url --set agent.staticPodURL.enabled=true --set agent.staticPodURL.defaultSource=url
field url DaemonSet sps-staticpodset-agent spec.template.spec.containers.0.ports.1 \
  '{"containerPort": 10280, "hostIP": "127.0.0.1", "hostPort": 10280, "name": "static-pods"}'
if grep -q -- '--manifest-source=url' "$WORK/url.yaml"; then ok "url: the agent gets --manifest-source=url"; else bad "url: no --manifest-source=url"; fi
lacks url "${OPTIONAL[@]}"

render monitoring --set metrics.serviceMonitor.enabled=true --set metrics.prometheusRule.enabled=true \
  --set metrics.grafanaDashboard.enabled=true --set metrics.serviceMonitor.labels.release=kps
has monitoring ServiceMonitor/sps-staticpodset-operator ServiceMonitor/sps-staticpodset-agent \
  PrometheusRule/sps-staticpodset ConfigMap/sps-staticpodset-dashboard Service/sps-staticpodset-agent-metrics
lacks monitoring PodMonitor/sps-staticpodset-operator PodMonitor/sps-staticpodset-agent NetworkPolicy/sps-staticpodset-agent
field monitoring ServiceMonitor sps-staticpodset-agent metadata.labels.release '"kps"'
field monitoring ServiceMonitor sps-staticpodset-agent spec.endpoints.0.relabelings.0 \
  '{"action": "replace", "replacement": "sps-staticpodset-agent", "targetLabel": "job"}'
field monitoring Service sps-staticpodset-agent-metrics spec.clusterIP '"None"'
field monitoring Service sps-staticpodset-agent-metrics spec.publishNotReadyAddresses true
if out=$($M dashboard <"$WORK/monitoring.yaml" 2>&1); then ok "monitoring: the dashboard ConfigMap holds a Grafana dashboard ($out)"
else bad "monitoring: $out"; fi

render podmonitor --set metrics.podMonitor.enabled=true
has podmonitor PodMonitor/sps-staticpodset-operator PodMonitor/sps-staticpodset-agent
lacks podmonitor ServiceMonitor/sps-staticpodset-agent Service/sps-staticpodset-agent-metrics
field podmonitor PodMonitor sps-staticpodset-operator spec.podMetricsEndpoints.0.relabelings.0.replacement '"sps-staticpodset-operator"'
if out=$(helm template sps "$CHART" "${KUBE[@]}" --set metrics.podMonitor.enabled=true --set metrics.serviceMonitor.enabled=true 2>&1); then
  bad "serviceMonitor and podMonitor together rendered"
elif grep -q "turn on one of them" <<<"$out"; then ok "serviceMonitor and podMonitor together are refused: $(grep -o 'metrics.serviceMonitor.*' <<<"$out")"
else bad "serviceMonitor and podMonitor together failed without saying why: $out"; fi

render replicas2 --set operator.replicas=2
has replicas2 PodDisruptionBudget/sps-staticpodset-operator
field replicas2 PodDisruptionBudget sps-staticpodset-operator spec.maxUnavailable 1
field replicas2 Deployment sps-staticpodset-operator \
  spec.template.spec.affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution.0.podAffinityTerm.topologyKey \
  '"kubernetes.io/hostname"'
render replicas2own --set operator.replicas=2 --set operator.affinity.nodeAffinity.x=y
field replicas2own Deployment sps-staticpodset-operator spec.template.spec.affinity '{"nodeAffinity": {"x": "y"}}'

render netpol --set networkPolicy.enabled=true --set agent.staticPodURL.enabled=true \
  --set 'networkPolicy.staticPodURLFrom[0].ipBlock.cidr=10.0.0.0/24'
has netpol NetworkPolicy/sps-staticpodset-operator NetworkPolicy/sps-staticpodset-agent
field netpol NetworkPolicy sps-staticpodset-operator spec.policyTypes '["Ingress"]'
field netpol NetworkPolicy sps-staticpodset-operator spec.ingress.0.ports '[{"port": 9101, "protocol": "TCP"}]'
field netpol NetworkPolicy sps-staticpodset-operator spec.ingress.0.from.0.namespaceSelector \
  '{"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}'
field netpol NetworkPolicy sps-staticpodset-operator spec.ingress.1 null
field netpol NetworkPolicy sps-staticpodset-agent spec.ingress.1 \
  '{"from": [{"ipBlock": {"cidr": "10.0.0.0/24"}}], "ports": [{"port": 10280, "protocol": "TCP"}]}'
render netpolfile --set networkPolicy.enabled=true
field netpolfile NetworkPolicy sps-staticpodset-agent spec.ingress.1 null

render helmtest --set helmTest.enabled=true --set networkPolicy.enabled=true
has helmtest Pod/sps-staticpodset-test-readyz Service/sps-staticpodset-agent-metrics
field helmtest Pod sps-staticpodset-test-readyz spec.automountServiceAccountToken false
field helmtest NetworkPolicy sps-staticpodset-agent spec.ingress.1.from.0.podSelector.matchLabels \
  '{"app.kubernetes.io/component": "helm-test", "app.kubernetes.io/instance": "sps"}'
if grep -q 'helm.sh/hook: test' "$WORK/helmtest.yaml"; then ok "helmtest: the pod is a test hook"; else bad "helmtest: the pod is not a test hook"; fi

echo "--- 3. schema"
# refused SET WORDS...: helm template with --set SET fails and its message contains every WORD.
refused() {
  local set=$1 out word; shift
  if out=$(helm template sps "$CHART" "${KUBE[@]}" --set "$set" 2>&1); then
    bad "schema: --set $set was accepted"; return
  fi
  for word in "$@"; do
    grep -qF -- "$word" <<<"$out" || { bad "schema: --set $set failed, but its message does not name $word: $out"; return; }
  done
  ok "schema refuses --set $set: $(grep -F -- "$1" <<<"$out" | head -n 1 | sed 's/^- //')"
}
accepted() {
  local out
  if out=$(helm template sps "$CHART" "${KUBE[@]}" "$@" 2>&1 >/dev/null); then ok "schema accepts $*"; else bad "schema refuses $*: $out"; fi
}
refused agent.staticPodURL.defaultSource=urll /agent/staticPodURL/defaultSource "'file', 'url', 'both'"
refused agent.staticPodUrl.enabled=true /agent "'staticPodUrl' not allowed"
refused metric.serviceMonitor.enabled=true "'metric' not allowed"
refused agent.logFormat=yaml /agent/logFormat "'json', 'text'"
refused agent.manifestDirType=File /agent/manifestDirType "'Directory', 'DirectoryOrCreate'"
refused operator.httpPort=70000 /operator/httpPort "65,535"
refused agent.staticPodURL.port=0 /agent/staticPodURL/port
refused agent.resyncInterval=5x /agent/resyncInterval "'5x'"
refused agent.resyncInterval=0s /agent/resyncInterval "'0s'"
refused operator.nodeGoneTimeout=five /operator/nodeGoneTimeout "'five'"
refused agent.manifestDir=etc/kubernetes/manifests /agent/manifestDir
refused metrics.serviceMonitor.interval=30 /metrics/serviceMonitor/interval
accepted --set agent.resyncInterval=90 --set agent.prepullTimeout=1h30m --set operator.nodeGoneTimeout=0
accepted --set agent.resyncInterval=500ms --set agent.staticPodURL.hostIP=::1 --set agent.stateDir= --set agent.criSocket=
if out=$($M schema-covers "$CHART/values.yaml" "$CHART/values.schema.json" 2>&1); then
  ok "values.yaml and values.schema.json name the same values"
else bad "values.yaml and values.schema.json differ: $out"; fi

echo "--- 4. alert rules"
$M rules <"$WORK/monitoring.yaml" >"$WORK/rules.yaml"
if out=$(promtool check rules "$WORK/rules.yaml" 2>&1); then ok "promtool check rules: $(grep -o '[0-9]* rules found' <<<"$out")"
else bad "promtool check rules: $out"; fi
cp "$HERE/alerts_test.yaml" "$WORK/"
if out=$(promtool test rules "$WORK/alerts_test.yaml" 2>&1); then ok "promtool test rules tests/chart/alerts_test.yaml"
else bad "promtool test rules: $out"; fi
while read -r alert url; do
  anchor=$(tr '[:upper:]' '[:lower:]' <<<"$alert")
  [[ $url == */docs/alerts.md#"$anchor" ]] || { bad "$alert: runbook_url $url does not point at docs/alerts.md#$anchor"; continue; }
  grep -qx "## $alert" "$ROOT/docs/alerts.md" || { bad "$alert: docs/alerts.md has no section '## $alert'"; continue; }
  ok "$alert: runbook in docs/alerts.md"
done < <($M alerts "$WORK/rules.yaml")

echo "--- 5. chart README"
if out=$(python3 "$HERE/values-table.py" --check 2>&1); then ok "charts/staticpodset/README.md: values table up to date"
else bad "$out"; fi

echo "--- 6. server-side dry run"
# The CRDs of the monitoring objects, as prometheus-operator publishes them in its module.
PROM_OPERATOR=github.com/prometheus-operator/prometheus-operator@v0.85.0
DRY_NS=sps-chart-check
if ! command -v kubectl >/dev/null || ! kubectl get --raw /readyz >/dev/null 2>&1; then
  bad "no API server to dry-run against (kubectl with KUBECONFIG; run-all.sh runs this after cluster up)"
elif ! crd_dir=$(go mod download -json "$PROM_OPERATOR" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])'); then
  bad "cannot download $PROM_OPERATOR from the Go module proxy"
else
  for crd in servicemonitors podmonitors prometheusrules; do
    kubectl apply --server-side -f "$crd_dir/example/prometheus-operator-crd/monitoring.coreos.com_$crd.yaml" >/dev/null
    kubectl wait --for=condition=Established --timeout=60s "crd/$crd.monitoring.coreos.com" >/dev/null
  done
  ok "prometheus-operator CRDs installed ($PROM_OPERATOR)"
  # Namespaced objects need their namespaces to exist; the chart's config Namespace is applied
  # over the real one (an apply, not a create). Neither is the e2e release's.
  for ns in "$DRY_NS" "$DRY_NS-config"; do
    kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  done
  combos=(
    "defaults|"
    "url|--set agent.staticPodURL.enabled=true --set agent.staticPodURL.defaultSource=url"
    "all-on|${ALL_ON[*]}"
    "podmonitor|--set metrics.podMonitor.enabled=true --set metrics.prometheusRule.enabled=true"
    "replicas|--set operator.replicas=3"
    "no-rbac-policies|--set agent.ownNodePolicy.enabled=false --set operator.dryRunOnlyPolicy.enabled=false"
  )
  server_version=$(kubectl version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])')
  for combo in "${combos[@]}"; do
    name=${combo%%|*}
    read -r -a args <<<"${combo#*|}"
    if ! helm template sps-check "$CHART" -n "$DRY_NS" --kube-version "$server_version" \
      --set configNamespace.name="$DRY_NS-config" "${args[@]}" \
      >"$WORK/dry-$name.yaml" 2>"$WORK/dry-$name.err"; then
      bad "dry run ($name): helm template failed: $(cat "$WORK/dry-$name.err")"
    # --force-conflicts: a dry run changes nothing, and the chart's fixed-name ClusterRoles may be
    # another release's (an installed e2e release, say).
    elif out=$(kubectl apply --server-side --dry-run=server --force-conflicts --field-manager=chart-check \
      -f "$WORK/dry-$name.yaml" 2>&1); then
      ok "dry run ($name): the API server accepts all $(grep -c '^kind:' "$WORK/dry-$name.yaml") objects"
    else
      bad "dry run ($name): the API server refuses: $out"
    fi
  done
  kubectl delete namespace "$DRY_NS" "$DRY_NS-config" --wait=false >/dev/null
fi

echo "chart: $passed passed, $failed failed"
((failed == 0))
