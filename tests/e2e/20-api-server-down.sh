#!/usr/bin/env bash
# Static pods must outlive the API server, and so must their manifests:
#   a set runs on both nodes -> stop kube-apiserver -> kill both agents' containers (the kubelet
#   restarts them with no API server to talk to) -> the restarted agents leave the directory alone and
#   the static pods keep running -> start kube-apiserver -> the set is Ready again, manifests unchanged.
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

A=${NODES[0]} B=${NODES[1]}
restore_api() { apiserver_start >/dev/null 2>&1 || true; }
cleanup() {
  restore_api
  kubectl delete sps -n "$E2E_NS" survivor --wait=true --timeout=120s >/dev/null 2>&1 || true
}
trap cleanup EXIT

install_product
ensure_e2e_namespace
apply_sleeper_set survivor
both_ready() { all_mirrors_ready "$E2E_NS" survivor; }
wait_for "survivor Ready on both nodes" 180 both_ready || fail "survivor not Ready on both nodes"
ok "survivor Ready on both nodes"

manifest_sums() { node_sha256 "$A" manifests 'staticpodset_*'; node_sha256 "$B" manifests 'staticpodset_*'; }
sums=$(manifest_sums)
running_id() { crictl_on "$1" ps -q --name "$2" --state running | head -n1; }
declare -A agent_before workload_before
for n in "$A" "$B"; do
  agent_before[$n]=$(running_id "$n" agent)
  workload_before[$n]=$(running_id "$n" main)
  [[ -n ${agent_before[$n]} && -n ${workload_before[$n]} ]] || fail "agent or workload container missing on $n"
done

# Killed, not stopped: an API server that vanishes mid-request is the harder case for the agents
# (a graceful stop also drains requests for a minute first).
log "killing kube-apiserver"
apiserver_kill || fail "kube-apiserver did not stop"

for n in "$A" "$B"; do crictl_on "$n" stop --timeout 5 "${agent_before[$n]}" >/dev/null; done
agent_restarted() { # node
  local id; id=$(running_id "$1" agent)
  [[ -n $id && $id != "${agent_before[$1]}" ]]
}
for n in "$A" "$B"; do
  wait_for "agent restarted on $n" 120 agent_restarted "$n" || fail "the kubelet did not restart the agent on $n"
done
ok "both agents restarted while the API server is down"

# The restarted agents must have started, found no API server, and left everything as it was. Their
# own log says when they gave up waiting for the first list; until then, poll what must stay true.
# grep reads all the log (no -q): quitting early would fail the pipe (pipefail) with a SIGPIPE.
agent_logged_api_error() { crictl_on "$1" logs "$(running_id "$1" agent)" 2>&1 | grep -iE "error|unreachable|refused|retry" >/dev/null; }
for n in "$A" "$B"; do
  wait_for "agent on $n to report the unreachable API" 60 agent_logged_api_error "$n" ||
    fail "agent on $n never reported the unreachable API server"
done
# assert_untouched WHEN: the manifests are byte-for-byte what they were and every static pod still
# runs in the same container.
assert_untouched() {
  [[ $(manifest_sums) == "$sums" ]] || fail "manifests changed $1"
  local n
  for n in "$A" "$B"; do
    [[ $(running_id "$n" main) == "${workload_before[$n]}" ]] || fail "the static pod's container on $n was restarted or stopped $1"
  done
}
assert_untouched "while the API server was down"
ok "with no API server: manifests unchanged, static pods untouched on both nodes"

log "starting kube-apiserver again"
apiserver_start || fail "kube-apiserver did not come back"
wait_for "survivor Ready again" 180 both_ready || fail "survivor not Ready after the API server came back"
assert_untouched "after the API server came back"
ok "API server back: same containers, same manifests, set Ready"
echo "20-api-server-down: $passed passed, 0 failed"
