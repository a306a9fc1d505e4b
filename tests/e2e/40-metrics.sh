#!/usr/bin/env bash
# A real Prometheus scrapes the operator and both agents (found by their chart labels and the port
# named "http"), and the series we document are there with sensible values: every agent has synced,
# the operator leads and has reconciled a set.
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PROM_PORT=19090
WORK=$(mktemp -d)
prom_pid=
cleanup() {
  [[ -n $prom_pid ]] && kill "$prom_pid" 2>/dev/null && wait "$prom_pid" 2>/dev/null
  kubectl delete sps -n "$E2E_NS" metrics-probe --wait=true --timeout=60s >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

install_product
ensure_e2e_namespace
# One set, so the operator has reconciled something and the agents have written something.
apply_sleeper_set metrics-probe
wait_for "metrics-probe Ready" 120 all_mirrors_ready "$E2E_NS" metrics-probe || fail "metrics-probe not Ready"

# Debian's Prometheus is built without kubernetes_sd_configs, so this test discovers the pods itself
# (the same pods, by the same labels and the port named "http") and hands them over by file_sd.
kubectl get pods -n "$RELEASE_NS" -l "app.kubernetes.io/instance=$RELEASE" -o json | python3 -c '
import json, sys
targets = []
for pod in json.load(sys.stdin)["items"]:
    ip = pod["status"].get("podIP")
    ports = [p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", []) if p.get("name") == "http"]
    if ip and ports:
        labels = pod["metadata"]["labels"]
        targets.append({"targets": [f"{ip}:{ports[0]}"],
                        "labels": {"component": labels.get("app.kubernetes.io/component", ""),
                                   "node": pod["spec"].get("nodeName", "")}})
json.dump(targets, sys.stdout)' >"$WORK/targets.json"
cat >"$WORK/prometheus.yml" <<YAML
global: {scrape_interval: 2s, scrape_timeout: 1s}
scrape_configs:
  - job_name: staticpodset
    file_sd_configs:
      - files: [$WORK/targets.json]
YAML
prometheus --config.file "$WORK/prometheus.yml" --storage.tsdb.path "$WORK/data" \
  --web.listen-address "127.0.0.1:$PROM_PORT" >"$WORK/prometheus.log" 2>&1 &
prom_pid=$!

api="http://127.0.0.1:$PROM_PORT/api/v1"
# query PROMQL -> prints "<labels> <value>" per series
query() {
  curl -sf --get "$api/query" --data-urlencode "query=$1" |
    python3 -c 'import json,sys; [print(r["metric"].get("node", r["metric"].get("component", "")), r["value"][1]) for r in json.load(sys.stdin)["data"]["result"]]'
}
# scalar PROMQL -> the value of a single-series result
scalar() { query "$1" | awk '{print $NF}'; }
# An agent on every node of the cluster (a kind cluster's control-plane node has one too).
agents=$(python3 -c 'import json,sys; print(sum(t["labels"]["component"] == "node-agent" for t in json.load(open(sys.argv[1]))))' "$WORK/targets.json")
((agents >= 2)) || fail "only $agents agent pods found"
targets_up() { [[ $(scalar 'sum(up{job="staticpodset"})') == $((agents + 1)) ]]; }
wait_for "$((agents + 1)) targets up (operator + $agents agents)" 60 targets_up ||
  { tail -20 "$WORK/prometheus.log" >&2; curl -s "$api/targets" >&2; fail "Prometheus did not find $((agents + 1)) healthy targets"; }
ok "Prometheus discovered and scraped the operator and all $agents agents"

agents_synced() { [[ $(scalar 'count(staticpodset_agent_syncs_total > 0)') == "$agents" ]]; }
wait_for "both agents report syncs" 60 agents_synced || fail "staticpodset_agent_syncs_total: $(query staticpodset_agent_syncs_total)"
written=$(scalar 'sum(staticpodset_agent_manifests_written_total)')
[[ -n $written ]] || fail "no manifests written total"
(( ${written%.*} >= 2 )) || fail "manifests written total is $written, expected >= 2"
[[ $(scalar 'sum(staticpodset_operator_leader)') == 1 ]] || fail "exactly one leader expected: $(query staticpodset_operator_leader)"
reconciled() { (( $(scalar 'sum(staticpodset_operator_reconciles_total)' | awk '{printf "%d", $1}') > 0 )); }
wait_for "operator reconciles" 30 reconciled || fail "no operator reconciles recorded"
[[ -n $(query 'staticpodset_operator_reconcile_duration_seconds_count') ]] || fail "no reconcile duration histogram"
[[ -n $(query 'staticpodset_agent_sync_duration_seconds_count') ]] || fail "no agent sync duration histogram"
ok "agent syncs $(query 'staticpodset_agent_syncs_total' | tr '\n' ' '); manifests written $written; operator leader=1"

# The per-set families, as kube-state-metrics has them for DaemonSets.
set_desired() { [[ $(scalar "staticpodset_set_status_desired_number_scheduled{namespace=\"$E2E_NS\",set=\"metrics-probe\"}") == 2 ]]; }
wait_for "the per-set gauges of metrics-probe" 30 set_desired ||
  fail "staticpodset_set_status_desired_number_scheduled: $(query staticpodset_set_status_desired_number_scheduled)"
available=$(scalar "staticpodset_set_status_condition{namespace=\"$E2E_NS\",set=\"metrics-probe\",condition=\"Available\",status=\"true\"}")
[[ $available == 1 ]] || fail "metrics-probe's Available condition is not 1 for status true: $available"
ok "per-set gauges: metrics-probe desired 2, Available true"
# Every node runs what it is assigned: no revision drift anywhere.
no_drift() { [[ $(scalar 'sum(staticpodset_agent_pods_not_current)') == 0 && $(scalar 'count(staticpodset_agent_pods_not_current)') == "$agents" ]]; }
wait_for "no revision drift on any node" 30 no_drift ||
  fail "staticpodset_agent_pods_not_current: $(query staticpodset_agent_pods_not_current)"
ok "revision drift: 0 on all $agents nodes"

# Prometheus' own linter on every component's exposition (names, units, HELP, counter suffixes).
for target in $(python3 -c 'import json,sys; [print(t["targets"][0]) for t in json.load(open(sys.argv[1]))]' "$WORK/targets.json"); do
  curl -sf "http://$target/metrics" >"$WORK/exposition" || fail "cannot read http://$target/metrics"
  promtool check metrics <"$WORK/exposition" >"$WORK/lint" 2>&1 || fail "promtool check metrics on $target: $(cat "$WORK/lint")"
done
ok "promtool check metrics passes on the operator and every agent"
echo "40-metrics: $passed passed, 0 failed"
