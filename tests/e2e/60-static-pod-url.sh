#!/usr/bin/env bash
# Web-hosted manifests with the real kubelet. Node B's kubelet is restarted with staticPodURL
# pointing at its agent (http://<B's bridge address>:10280/static-pods, with the header the agent
# requires), and put back as it was at the end: until a URL answers once, a kubelet deletes no pod on
# its node, so the other suites run without it.
#   the endpoint: 401 without the header, an empty list while B is in file mode
#   -> a set running from a file on B -> label B staticpods.dev/manifest-source=url -> the file is
#      gone, the kubelet runs the pod from the URL (mirror pod config.source=http), the set counts B
#   -> a new set reaches B through the URL only; node A still gets files; status 2/2/2
#   -> template edit: new revision and config hash on B through the URL
#   -> API server down, B's agent restarted: the same list from its saved state, the pods keep running
#   -> delete a set: its pod leaves B -> remove the label: the set runs from a file on B again.
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

A=${NODES[0]} B=${NODES[1]}
LABEL=staticpods.dev/manifest-source
URL=$(node_static_pod_url "$B")
TOKEN=$(static_pod_url_token)

restore_api() { apiserver_start >/dev/null 2>&1 || true; }
cleanup() {
  restore_api
  kubectl label node "$B" "$LABEL-" >/dev/null 2>&1 || true
  kubectl delete sps -n "$E2E_NS" moved urlweb --wait=true --timeout=120s >/dev/null 2>&1 || true
  log "restarting $B's kubelet without staticPodURL"
  kubelet_url_mode "$B" off >/dev/null 2>&1 || true
}
trap cleanup EXIT

if [[ $E2E_PROVIDER == local && $(node_cni_conflist "$B") != *conditionsV4* ]]; then
  die "$B's CNI config predates per-node host ports; run tests/e2e/cluster/down and up"
fi

install_product
ensure_e2e_namespace

# --- 1. the endpoint before the kubelet uses it ------------------------------------------------
# The URL is asked from node B, as its kubelet asks it.
code() { node_run "$B" curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" "$URL"; }
body() { node_run "$B" curl -sf --max-time 5 -H "$STATIC_POD_URL_HEADER: $TOKEN" "$URL"; }
[[ $(code) == 401 ]] || fail "no header: want 401, got $(code)"
[[ $(code -H "$STATIC_POD_URL_HEADER: wrong") == 401 ]] || fail "wrong header: want 401"
wait_for "B's endpoint to answer 200" 60 body || fail "B's endpoint: $(code -H "$STATIC_POD_URL_HEADER: $TOKEN")"
[[ $(body | jq -c '[.kind, .items]') == '["PodList",[]]' ]] || fail "file mode must serve an empty list: $(body)"
ok "endpoint at $URL: 401 without the header, an empty PodList while $B is in file mode"

log "restarting $B's kubelet with staticPodURL=$URL"
kubelet_url_mode "$B" on
node_ready() { [[ $(kubectl get node "$B" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}') == True ]]; }
wait_for "$B Ready" 120 node_ready || fail "$B not Ready after the kubelet restart"

# --- 2. a set moves from B's file to B's URL ---------------------------------------------------
source_of() { kubectl get pod -n "$E2E_NS" "$1" -o jsonpath='{.metadata.annotations.kubernetes\.io/config\.source}' 2>/dev/null; }
has_file() { node_has "$1" manifests "staticpodset_${E2E_NS}_$2.yaml"; }
apply_sleeper_set moved
wait_for "moved Ready on both nodes" 180 all_mirrors_ready "$E2E_NS" moved || fail "moved not Ready"
{ [[ $(source_of "moved-$B") == file ]] && has_file "$B" moved; } || fail "moved on $B should run from a file"

kubectl label node "$B" "$LABEL=url" --overwrite >/dev/null
from_url() { # set
  [[ $(source_of "$1-$B") == http ]] && mirror_ready "$E2E_NS" "$1-$B" && ! has_file "$B" "$1"
}
wait_for "moved served over the URL on $B" 120 from_url moved || fail "moved did not move to the URL: source=$(source_of "moved-$B") file=$(has_file "$B" moved && echo yes || echo no)"
[[ $(kubectl get nodestaticpods "$B" -o jsonpath='{.status.manifestSource}') == URL ]] || fail "status.manifestSource of $B not URL"
body | jq -e --arg n moved '[.items[].metadata.name] == [$n]' >/dev/null || fail "served list: $(body)"
ok "label $LABEL=url: moved left $B's directory and runs from the URL (config.source=http)"

# --- 3. a new set: URL on B, file on A; status counts B ----------------------------------------
t0=$(date +%s.%N)
web_set_yaml urlweb '{}' v1 | kubectl apply -f - >/dev/null
wait_for "urlweb Ready on both" 180 all_mirrors_ready "$E2E_NS" urlweb || fail "urlweb not Ready on both nodes"
t1=$(date +%s.%N)
from_url urlweb || fail "urlweb on $B does not run from the URL"
{ [[ $(source_of "urlweb-$A") == file ]] && has_file "$A" urlweb; } || fail "urlweb on $A should run from a file"
counts_are() { # desired ready updated
  [[ $(sps_status urlweb desiredNumberScheduled) == "$1" && $(sps_status urlweb numberReady) == "$2" &&
     $(sps_status urlweb updatedNumberScheduled) == "$3" ]]
}
wait_for "status 2/2/2" 60 counts_are 2 2 2 || fail "status: $(kubectl get sps -n "$E2E_NS" urlweb -o jsonpath='{.status}')"
[[ $(kubectl get nodestaticpods "$B" -o jsonpath='{.status.pods[?(@.setName=="urlweb")].source}') == URL ]] || fail "report source on $B not URL"
[[ -z $(node_ls "$B" manifests 'staticpodset_*') ]] || fail "files of ours in $B's staticPodPath: $(node_ls "$B" manifests)"
apply_to_ready=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')
ok "new set: $B through the URL, $A through a file, status 2/2/2, no file of ours on $B (apply to Ready ${apply_to_ready}s)"

# --- 4. template edit reaches B through the URL ------------------------------------------------
rev1=$(sps_status urlweb updateRevision)
hash1=$(kubectl get pod -n "$E2E_NS" "urlweb-$B" -o jsonpath='{.metadata.annotations.kubernetes\.io/config\.hash}')
web_set_yaml urlweb '{}' v2 | kubectl apply -f - >/dev/null
wait_for "new revision" 30 bash -c "[[ \$(kubectl get sps -n $E2E_NS urlweb -o jsonpath='{.status.updateRevision}') != '$rev1' ]]" || fail "no new revision"
rev2=$(sps_status urlweb updateRevision)
b_on_rev2() {
  [[ $(kubectl get pod -n "$E2E_NS" "urlweb-$B" -o jsonpath='{.metadata.annotations.staticpods\.dev/revision}' 2>/dev/null) == "$rev2" ]] &&
    from_url urlweb
}
wait_for "urlweb on $B at $rev2" 180 b_on_rev2 || fail "urlweb on $B did not reach $rev2"
hash2=$(kubectl get pod -n "$E2E_NS" "urlweb-$B" -o jsonpath='{.metadata.annotations.kubernetes\.io/config\.hash}')
[[ $hash1 != "$hash2" ]] || fail "config hash on $B unchanged after the edit"
wait_for "status 2/2/2 at $rev2" 180 counts_are 2 2 2 || fail "status after the edit: $(kubectl get sps -n "$E2E_NS" urlweb -o jsonpath='{.status}')"
# A re-poll restarts nothing: the same container keeps running over several polls (5 s apart) of
# B's kubelet, counted by B's agent (its metric counts every request; the suite sends none meanwhile).
running_id() { crictl_on "$B" ps -q --name "$1" --label "io.kubernetes.pod.namespace=$E2E_NS" --state running | head -n1; }
# The agent pod's IP stays while its containers restart, so it is read once, with the API up.
agent_ip_b=$(agent_ip "$B")
[[ -n $agent_ip_b ]] || fail "no agent pod IP on $B"
url_requests() { agent_metric "$agent_ip_b" "staticpodset_agent_url_requests_total{code=\"$1\"}"; }
polled() { # code count-before n: the agent answered code to n more requests since count-before
  (($(url_requests "$1") >= $2 + $3))
}
web_before=$(running_id web)
before=$(url_requests 200)
wait_for "3 more polls of $B's kubelet" 60 polled 200 "$before" 3 ||
  fail "$B's kubelet did not poll the URL 3 times within 60s (200 answers: $before -> $(url_requests 200))"
[[ $(running_id web) == "$web_before" ]] || fail "urlweb's container on $B changed between polls"
ok "template edit over the URL: $rev1 -> $rev2, config hash $hash1 -> $hash2; re-polls restart nothing"

# --- 5. API server down, B's agent restarted: an error until loaded, pods keep running ---------
main_before=$(running_id main)
agent_before=$(crictl_on "$B" ps -q --name agent --state running | head -n1)
[[ -n $main_before && -n $web_before && -n $agent_before ]] || fail "containers missing on $B"
served_before=$(body)
agent_logs() { crictl_on "$B" logs "$agent_before" 2>&1; }
log_lines_before=$(agent_logs | wc -l)
log "killing kube-apiserver"
apiserver_kill || fail "kube-apiserver did not stop"
# The list is compared once B's agent has seen the API server go (its watch fails and retries: a new
# log line) and B's kubelet has polled it since, and got the list.
lost_api() { agent_logs | tail -n +"$((log_lines_before + 1))" | grep -iE "error|unreachable|refused|retry" >/dev/null; }
wait_for "$B's agent to log the lost API server" 60 lost_api || fail "$B's agent logged nothing about the lost API server"
before=$(url_requests 200)
wait_for "a poll of $B's kubelet answered 200 without the API server" 30 polled 200 "$before" 1 ||
  fail "$B's kubelet got no list from the agent without the API server (200: $before -> $(url_requests 200), 503: $(url_requests 503))"
[[ $(body) == "$served_before" ]] || fail "the served list changed while the API server is down"
crictl_on "$B" stop --timeout 5 "$agent_before" >/dev/null
agent_back() { local id; id=$(crictl_on "$B" ps -q --name agent --state running | head -n1); [[ -n $id && $id != "$agent_before" ]]; }
wait_for "agent restarted on $B" 120 agent_back || fail "the kubelet did not restart the agent on $B"
# Restarted with no API server, the agent acts on its saved last-known state: the same list, byte
# for byte, never a 503 that would leave a restarted kubelet without its URL pods.
serves_ok() { [[ $(code -H "$STATIC_POD_URL_HEADER: $TOKEN") == 200 ]]; }
wait_for "the restarted agent to serve its saved list" 30 serves_ok ||
  fail "restarted agent without API: want 200 from its saved state, got $(code -H "$STATIC_POD_URL_HEADER: $TOKEN")"
[[ $(body) == "$served_before" ]] || fail "the restarted agent serves another list: $(body)"
# The restarted agent's counters start at 0; the suite's own requests come before this.
before=$(url_requests 200)
wait_for "3 polls of $B's kubelet answered 200 by the restarted agent" 60 polled 200 "$before" 3 ||
  fail "$B's kubelet did not get the list from the restarted agent 3 times within 60s (200: $before -> $(url_requests 200), 503: $(url_requests 503))"
[[ $(url_requests 503) == 0 ]] || fail "the restarted agent answered 503 $(url_requests 503) times"
[[ $(running_id main) == "$main_before" && $(running_id web) == "$web_before" ]] || fail "URL pods on $B stopped or restarted while the API server was down"
ok "API down: same list served, also by the restarted agent (from its saved state, never 503); the kubelet keeps both URL pods running"
log "starting kube-apiserver again"
apiserver_start || fail "kube-apiserver did not come back"
wait_for "B's endpoint serves again" 120 body || fail "endpoint did not recover"
[[ $(body) == "$served_before" ]] || fail "after recovery the list differs: $(body)"
[[ $(running_id main) == "$main_before" && $(running_id web) == "$web_before" ]] || fail "URL pods restarted after recovery"
ok "API back: byte-identical list, same containers"

# --- 6. deletion reaches B through the URL -----------------------------------------------------
# Right after the API server's return: the operator and the agents reach it again only once the
# kubernetes Service routes to it and their watches' backoff ends (on kind, kube-proxy's own watch
# recovers first, over a minute), and the deletion waits for both agents to let go: up to 300 s.
kubectl delete sps -n "$E2E_NS" urlweb --wait=true --timeout=300s >/dev/null || fail "deleting urlweb did not finish"
gone_from_b() {
  ! kubectl get pod -n "$E2E_NS" "urlweb-$B" >/dev/null 2>&1 && [[ -z $(running_id web) ]] &&
    body | jq -e '[.items[].metadata.name] == ["moved"]' >/dev/null
}
wait_for "urlweb gone from $B" 120 gone_from_b || fail "urlweb still on $B: $(body | jq -c '[.items[].metadata.name]')"
ok "deleted set: no longer served, container and mirror pod gone on $B"

# --- 7. back to file mode -------------------------------------------------------------------------
# The kubelet runs one pod of a name per node: the agent drops the set from the list first and
# writes the file only once the kubelet stopped the URL pod (its mirror pod is gone).
kubectl label node "$B" "$LABEL-" >/dev/null
back_on_file() {
  has_file "$B" moved && [[ $(source_of "moved-$B") == file ]] && mirror_ready "$E2E_NS" "moved-$B" &&
    body | jq -e '.items == []' >/dev/null
}
wait_for "moved back on a file on $B" 120 back_on_file ||
  fail "moved on $B after removing the label: file $(has_file "$B" moved && echo yes || echo no), source $(source_of "moved-$B"), list $(body | jq -c '[.items[].metadata.name]')"
ok "label removed: $B's list is empty and the kubelet runs moved from its file again (mirror pod Ready)"

kubectl delete sps -n "$E2E_NS" moved --wait=true --timeout=120s >/dev/null || fail "deleting moved did not finish"
echo "measure: url-apply-to-ready-2-nodes=${apply_to_ready}s"
echo "60-static-pod-url: $passed passed, 0 failed"
