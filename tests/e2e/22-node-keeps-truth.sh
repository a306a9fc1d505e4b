#!/usr/bin/env bash
# The node keeps its own truth: each agent saves its last-known state (its NodeStaticPods spec, the
# manifests of the revisions it names, its mode) in the chart's agent.stateDir, one file per node
# (<stateDir>/<node>.json; both nodes share this host), and a restarted agent with no API server
# acts on it.
#   1. A 120 s API outage. Node B serves one set over the static pod URL (mode both). Both agents
#      are restarted, act on their saved state, and on each node one owned manifest is edited and
#      another deleted -> both put back within one resync while the API server is still down (the
#      repair time is printed); B's restarted agent serves the same list, byte for byte, B's kubelet
#      keeps the URL pod, and, restarted itself, starts it again from that list. API back -> every
#      set Ready within 30 s.
#   2. A corrupt state file on A, none on B, agents restarted with the API server down, a manifest
#      edited on each node: reported (log line, metric), the directory left exactly as it is (the
#      agent removes nothing, writes nothing). API back -> manifests put back, every set Ready, and
#      both state files written again.
#   3. Node-local fallback: a set with spec.nodeFallback {enabled, deadlineSeconds 20} and one
#      without, both healthy at revision R; a new revision X whose container exits at once reaches
#      A first (maxUnavailable 1); the API server is stopped as soon as A's manifests hold X -> A
#      runs R again within the deadline plus 30 s for the first set (the time is printed), while
#      the second keeps X for the deadline plus 30 s. API back -> the first set shows the failure
#      (report fallback, entry lastFailure NodeFallback, Degraded, Warning Event NodeFallback), the
#      second shows no fallback.
# SECTIONS (default "1 2 3") runs a subset while working on one part; the test command runs all.
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

A=${NODES[0]} B=${NODES[1]}
SECTIONS=${SECTIONS:-1 2 3}
# install_product's agent.resyncInterval: "within one resync".
RESYNC=10
OUTAGE=120
LABEL=staticpods.dev/manifest-source
KEEP_SETS=(keep-edited keep-deleted)
FALLBACK_DEADLINE=20
url_kubelet=0

restore_api() { apiserver_start >/dev/null 2>&1 || true; }
cleanup() {
  restore_api
  kubectl label node "$B" "$LABEL-" >/dev/null 2>&1 || true
  kubectl delete sps -n "$E2E_NS" "${KEEP_SETS[@]}" keep-url fb-on fb-off --ignore-not-found \
    --wait=true --timeout=120s >/dev/null 2>&1 || true
  if ((url_kubelet)); then
    log "restarting $B's kubelet without staticPodURL"
    kubelet_url_mode "$B" off >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
runs_section() { [[ " $SECTIONS " == *" $1 "* ]]; }

install_product
ensure_e2e_namespace

# --- helpers --------------------------------------------------------------------------------------
# The agent's state file of NODE (in its state directory) and SET's manifest (in its staticPodPath).
state_file() { echo "$1.json"; }
state_of() { node_cat "$1" state "$(state_file "$1")" 2>/dev/null; }
state_dirs() { local n; for n in "$A" "$B"; do node_run "$n" ls -l "$(node_path "$n" state)" 2>&1; done; }
manifest() { echo "staticpodset_${E2E_NS}_$1.yaml"; }
manifest_dirs() { local n; for n in "$A" "$B"; do node_run "$n" ls -l "$(node_path "$n" manifests)" 2>&1; done; }
file_revision() { manifest_revision "$1" "$(manifest "$2")"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }
# The running container CONTAINER of SET's static pod on NODE (the kubelet names it SET-NODE).
container_id() { # node set container
  crictl_on "$1" ps -q --state running --name "^$3\$" --label "io.kubernetes.pod.name=$2-$1" | head -n1
}
agent_id() { crictl_on "$1" ps -q --state running --name '^agent$' | head -n1; }
agent_logs() { crictl_on "$1" logs "$(agent_id "$1")" 2>&1; }
# The agents' pod IPs stay while their containers restart: read once, with the API server up.
declare -A agent_ips
for n in "$A" "$B"; do
  agent_ips[$n]=$(agent_ip "$n")
  [[ -n ${agent_ips[$n]} ]] || fail "no agent pod IP on $n"
done
metric() { agent_metric "${agent_ips[$1]}" "$2"; }
metric_is() { [[ $(metric "$1" "$2") == "$3" ]]; }
sps_ready() { # set: every node's mirror pod Ready and the status counts them
  all_mirrors_ready "$E2E_NS" "$1" &&
    [[ $(sps_status "$1" numberReady) == 2 && $(sps_status "$1" desiredNumberScheduled) == 2 ]]
}
all_ready() { local s; for s in "$@"; do sps_ready "$s" || return 1; done; }
node_ready() { [[ $(kubectl get node "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}') == True ]]; }

stop_api() {
  log "killing kube-apiserver"
  apiserver_kill || fail "kube-apiserver did not stop"
}
declare -A agent_before
restart_agents() { # stops both agents' containers; the kubelet starts new ones
  local n
  for n in "$A" "$B"; do
    agent_before[$n]=$(agent_id "$n")
    [[ -n ${agent_before[$n]} ]] || fail "no running agent on $n"
    crictl_on "$n" stop --timeout 5 "${agent_before[$n]}" >/dev/null
  done
  for n in "$A" "$B"; do
    wait_for "a new agent container on $n" 120 agent_restarted "$n" || fail "the kubelet did not restart the agent on $n"
  done
}
agent_restarted() { local id; id=$(agent_id "$1"); [[ -n $id && $id != "${agent_before[$1]}" ]]; }

edit_by_hand() { # node
  # The edit is checked before it is written: an agent that heals drift may put the file back
  # before any check after it could look.
  local f edited
  f=$(manifest keep-edited)
  edited=$(node_cat "$1" manifests "$f" | sed -E 's/value: "?v1"?$/value: edited-by-hand/')
  [[ $edited == *"value: edited-by-hand"* ]] || fail "could not edit $f on $1"
  printf '%s\n' "$edited" | node_put "$1" manifests "$f"
}
# drift NODE: a hand edit of one owned manifest and the removal of another.
drift() { edit_by_hand "$1"; node_rm "$1" manifests "$(manifest keep-deleted)"; }
# The manifests of the keep sets as the API assigns them, per node (recorded with the API up).
declare -A want
record_manifests() {
  local n s
  for n in "$A" "$B"; do for s in "${KEEP_SETS[@]}"; do
    want[$n/$s]=$(node_cat "$n" manifests "$(manifest "$s")" | sha256sum) || fail "no manifest of $s on $n"
  done; done
}
put_back() { # node...
  local n s
  for n in "$@"; do for s in "${KEEP_SETS[@]}"; do
    [[ $({ node_cat "$n" manifests "$(manifest "$s")" 2>/dev/null || true; } | sha256sum) == "${want[$n/$s]}" ]] || return 1
  done; done
}
apply_keep_sets() {
  local s
  for s in "${KEEP_SETS[@]}"; do web_set_yaml "$s" '{}' v1 | kubectl apply -f - >/dev/null; done
}

# --- 1. a 120 s outage: drift healed and the URL served from the saved state ----------------------
if runs_section 1; then
  log "restarting $B's kubelet with staticPodURL, $B in mode both"
  kubectl label node "$B" "$LABEL=both" --overwrite >/dev/null
  url_kubelet=1
  kubelet_url_mode "$B" on
  wait_for "$B Ready" 120 node_ready "$B" || fail "$B not Ready after the kubelet restart"
  apply_keep_sets
  # In mode both, a manifest annotated for the URL is served; the others stay files.
  kubectl apply -f - >/dev/null <<YAML
apiVersion: staticpods.dev/v1alpha1
kind: StaticPodSet
metadata: {name: keep-url, namespace: $E2E_NS}
spec:
  template:
    metadata:
      labels: {app: keep-url}
      annotations: {$LABEL: url}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {name: main, image: $BUSYBOX_IMAGE, imagePullPolicy: Never, command: [sleep, "100000"]}
YAML
  url_source() { [[ $(kubectl get pod -n "$E2E_NS" "keep-url-$B" -o jsonpath='{.metadata.annotations.kubernetes\.io/config\.source}' 2>/dev/null) == http ]]; }
  wait_for "every set Ready on both nodes" 180 all_ready "${KEEP_SETS[@]}" keep-url || fail "sets not Ready"
  wait_for "keep-url served to $B's kubelet" 60 url_source || fail "keep-url on $B does not run from the URL"
  ! node_has "$B" manifests "$(manifest keep-url)" || fail "keep-url has a file on $B"
  record_manifests
  URL=$(node_static_pod_url "$B")
  body() { node_run "$B" curl -sf --max-time 5 -H "$STATIC_POD_URL_HEADER: $(static_pod_url_token)" "$URL"; }
  served_before=$(body) || fail "$B's endpoint does not answer"
  jq -e '[.items[].metadata.name] == ["keep-url"]' <<<"$served_before" >/dev/null || fail "$B serves: $served_before"
  url_pod_before=$(container_id "$B" keep-url main)
  [[ -n $url_pod_before ]] || fail "keep-url's container not running on $B"
  saved() { # node set...: the node's state file names every set
    local state; state=$(state_of "$1") || return 1; shift
    local s; for s in "$@"; do [[ $state == *"\"$s\""* ]] || return 1; done
  }
  both_saved() { saved "$A" "${KEEP_SETS[@]}" keep-url && saved "$B" "${KEEP_SETS[@]}" keep-url; }
  wait_for "both state files name every set" 60 both_saved ||
    fail "state files missing or incomplete: $(state_dirs)"
  ok "3 sets Ready on both nodes, keep-url served over $B's URL; state saved in $(node_path "$A" state "$(state_file "$A")") and $(node_path "$B" state "$(state_file "$B")")"

  stop_api
  t_kill=$SECONDS
  restart_agents
  for n in "$A" "$B"; do
    wait_for "$n's new agent to act on its saved state" 30 metric_is "$n" staticpodset_agent_saved_state_in_use 1 ||
      fail "$n's restarted agent does not act on its saved state (saved_state_in_use $(metric "$n" staticpodset_agent_saved_state_in_use), loads loaded=$(metric "$n" 'staticpodset_agent_state_loads_total{result="loaded"}') invalid=$(metric "$n" 'staticpodset_agent_state_loads_total{result="invalid"}') missing=$(metric "$n" 'staticpodset_agent_state_loads_total{result="missing"}'))"
    metric_is "$n" 'staticpodset_agent_state_loads_total{result="loaded"}' 1 || fail "$n: state not counted as loaded"
  done
  ok "API server down, both agents restarted: each loaded its state and acts on it (saved_state_in_use 1)"

  t_drift=$(now)
  for n in "$A" "$B"; do drift "$n"; done
  wait_for "both manifests put back on both nodes" $((RESYNC + 2)) put_back "$A" "$B" ||
    fail "not put back within one resync (${RESYNC}s) with the API server down: $(manifest_dirs)"
  repair=$(since "$t_drift")
  # The kubelet runs the put-back pods again (it stopped the deleted one, swapped the edited one).
  restored_runs() { local n; for n in "$A" "$B"; do [[ -n $(container_id "$n" keep-deleted web) ]] || return 1; done; }
  wait_for "keep-deleted running again on both nodes" 60 restored_runs || fail "the kubelet does not run keep-deleted again"
  ok "edited and deleted manifests put back on both nodes in ${repair}s with the API server down; the kubelet runs them"

  # B's restarted agent has answered B's kubelet (polls every 5 s) from its saved state.
  answered_200() { (($(metric "$B" 'staticpodset_agent_url_requests_total{code="200"}') >= $1)); }
  wait_for "two polls of $B's kubelet answered 200" 30 answered_200 2 ||
    fail "$B's kubelet got no list from the restarted agent (200: $(metric "$B" 'staticpodset_agent_url_requests_total{code="200"}'), 503: $(metric "$B" 'staticpodset_agent_url_requests_total{code="503"}'))"
  metric_is "$B" 'staticpodset_agent_url_requests_total{code="503"}' 0 || fail "$B's restarted agent answered 503"
  [[ $(body) == "$served_before" ]] || fail "$B's restarted agent serves another list: $(body)"
  [[ $(container_id "$B" keep-url main) == "$url_pod_before" ]] || fail "keep-url's container on $B was restarted or stopped"
  ok "$B's restarted agent serves the same list, byte for byte (no 503); the kubelet keeps the URL pod"

  # A kubelet restarted now knows its URL pods only from the agent's list: it starts the URL pod's
  # stopped container again only if it got it.
  log "restarting $B's kubelet with the API server down"
  kubelet_url_mode "$B" on
  crictl_on "$B" stop --timeout 2 "$url_pod_before" >/dev/null
  url_pod_started() { local id; id=$(container_id "$B" keep-url main); [[ -n $id && $id != "$url_pod_before" ]]; }
  wait_for "$B's restarted kubelet to start keep-url again" 60 url_pod_started ||
    fail "$B's restarted kubelet did not start keep-url from the URL (200: $(metric "$B" 'staticpodset_agent_url_requests_total{code="200"}'), 503: $(metric "$B" 'staticpodset_agent_url_requests_total{code="503"}'))"
  ok "$B's kubelet, restarted with the API server down, starts the URL pod from the agent's list"

  # The rest of the outage: what was put back stays put back.
  while ((SECONDS - t_kill < OUTAGE)); do
    put_back "$A" "$B" || fail "manifests changed again during the outage, after $((SECONDS - t_kill))s"
    sleep 1
  done
  log "starting kube-apiserver again after $((SECONDS - t_kill))s"
  apiserver_start || fail "kube-apiserver did not come back"
  t_back=$(now)
  wait_for "every set Ready within 30 s" 30 all_ready "${KEEP_SETS[@]}" keep-url ||
    fail "not every set Ready 30 s after the API server came back"
  ready_after=$(since "$t_back")
  # After minutes without an API server the agent's watch retries every 30 s (kube-runtime's
  # default backoff at its cap, with jitter), so its first list may come that long after the
  # API server is back: 60 s, not less.
  for n in "$A" "$B"; do
    wait_for "$n's agent back on the API server" 60 metric_is "$n" staticpodset_agent_saved_state_in_use 0 ||
      fail "$n's agent still acts on its saved state"
  done
  put_back "$A" "$B" || fail "manifests differ from the API's after the outage"
  ok "API server back after ${OUTAGE}s: every set Ready in ${ready_after}s, agents on the API again"

  kubectl delete sps -n "$E2E_NS" keep-url --wait=true --timeout=120s >/dev/null || fail "deleting keep-url did not finish"
  kubectl label node "$B" "$LABEL-" >/dev/null
  kubelet_url_mode "$B" off
  url_kubelet=0
  wait_for "$B Ready" 120 node_ready "$B" || fail "$B not Ready after the kubelet restart"
  echo "measure: outage-drift-repair=${repair}s outage-ready-after-api=${ready_after}s"
fi

# --- 2. a corrupt and a missing state file: reported, nothing removed -----------------------------
if runs_section 2; then
  apply_keep_sets
  wait_for "the keep sets Ready on both nodes" 180 all_ready "${KEEP_SETS[@]}" || fail "keep sets not Ready"
  record_manifests
  both_files() { [[ -n $(state_of "$A") && -n $(state_of "$B") ]]; }
  wait_for "both state files" 60 both_files ||
    fail "no state files: $(state_dirs)"

  stop_api
  # With the API server down nothing rewrites the files: A's gets a one-character edit that keeps
  # it valid JSON (only its checksum tells), B's goes.
  [[ $(state_of "$A") == *'"keep-edited"'* ]] || fail "A's state file does not name keep-edited"
  node_run "$A" sed -i '0,/"keep-edited"/s//"keep-editee"/' "$(node_path "$A" state "$(state_file "$A")")"
  node_rm "$B" state "$(state_file "$B")"
  restart_agents
  logged() { agent_logs "$1" | grep -i 'last-known state' >/dev/null; }
  for n in "$A" "$B"; do
    wait_for "$n's agent to report its state file" 30 logged "$n" || fail "$n's agent logged nothing about its last-known state"
  done
  for n in "$A" "$B"; do edit_by_hand "$n"; done
  keep_sums() {
    local n
    for n in "$A" "$B"; do node_sha256 "$n" manifests "$(manifest keep-edited) $(manifest keep-deleted)"; done
  }
  left=$(keep_sums)
  [[ $(grep -c . <<<"$left") == 4 ]] || fail "keep manifests missing before the outage: $left"
  untouched() { [[ $(keep_sums) == "$left" ]]; }
  # Two resyncs (and the agent's wait for a first list) pass: the agents must not have touched the
  # directory, and must not be acting on a saved state.
  t0=$SECONDS
  while ((SECONDS - t0 < 2 * RESYNC + 10)); do
    untouched || fail "an agent without a usable state changed the directory after $((SECONDS - t0))s: $(manifest_dirs)"
    for n in "$A" "$B"; do
      metric_is "$n" staticpodset_agent_saved_state_in_use 0 || fail "$n's agent acts on a state it should not have"
    done
    sleep 1
  done
  metric_is "$A" 'staticpodset_agent_state_loads_total{result="invalid"}' 1 ||
    fail "A's corrupt state not counted invalid (invalid=$(metric "$A" 'staticpodset_agent_state_loads_total{result="invalid"}'), loaded=$(metric "$A" 'staticpodset_agent_state_loads_total{result="loaded"}'))"
  metric_is "$B" 'staticpodset_agent_state_loads_total{result="missing"}' 1 ||
    fail "B's missing state not counted missing (missing=$(metric "$B" 'staticpodset_agent_state_loads_total{result="missing"}'))"
  ok "corrupt state on $A, none on $B: reported (log, metric invalid/missing); every manifest, the edited ones too, left as it was for $((2 * RESYNC + 10))s"

  log "starting kube-apiserver again"
  apiserver_start || fail "kube-apiserver did not come back"
  t_back=$(now)
  # The agents' watches retry with a backoff of up to 30 s while the API server is away, and a
  # kind API server is only ready some seconds after its first answer: up to 90 s.
  wait_for "manifests put back" 90 put_back "$A" "$B" || fail "manifests not put back after the API server came back"
  # Without a saved state the manifest comes back only after the API server, at about the moment
  # the kubelet deletes the mirror pod of the edited-away pod; the kubelet may then leave the
  # restored pod without a mirror pod until its next periodic sync of the pod (60-90 s): what
  # section 1's saved state avoids, by putting the manifest back before the API server returns.
  wait_for "every set Ready" 180 all_ready "${KEEP_SETS[@]}" ||
    fail "not every set Ready 180 s after the API server came back"
  ready_after_nostate=$(since "$t_back")
  # A header line with the checksum, then the state as JSON.
  state_ok() {
    local state; state=$(state_of "$1") || return 1
    [[ $(head -n1 <<<"$state") == 'staticpodset-agent-state sha256:'* ]] &&
      tail -n +2 <<<"$state" | python3 -m json.tool >/dev/null 2>&1 &&
      [[ $state == *'"keep-edited"'* ]]
  }
  both_ok() { state_ok "$A" && state_ok "$B"; }
  wait_for "both state files written again" 30 both_ok ||
    fail "state files not rewritten: $(state_dirs)"
  ok "API server back: manifests put back, every set Ready in ${ready_after_nostate}s, both state files written again"
  echo "measure: nostate-ready-after-api=${ready_after_nostate}s"
  kubectl delete sps -n "$E2E_NS" "${KEEP_SETS[@]}" --wait=true --timeout=120s >/dev/null || fail "deleting the keep sets did not finish"
fi

# --- 3. node-local fallback -----------------------------------------------------------------------
if runs_section 3; then
  fallback_spec() { # enabled
    printf '%s\n' "nodeFallback: {enabled: $1, deadlineSeconds: $FALLBACK_DEADLINE}" \
      "updateStrategy: {rollingUpdate: {maxUnavailable: 1}}"
  }
  # A revision whose container exits at once.
  broken() { sed 's|command: .*|command: ["sh", "-c", "exit 3"]|'; }
  web_set_yaml fb-on '{}' v1 "$(fallback_spec true)" | kubectl apply -f - >/dev/null || fail "fb-on rejected"
  web_set_yaml fb-off '{}' v1 "$(fallback_spec false)" | kubectl apply -f - >/dev/null || fail "fb-off rejected"
  wait_for "fb-on and fb-off Ready on both nodes" 180 all_ready fb-on fb-off || fail "fallback sets not Ready"
  declare -A R X
  for s in fb-on fb-off; do
    R[$s]=$(sps_status "$s" updateRevision)
    [[ $(file_revision "$A" "$s") == "${R[$s]}" && $(file_revision "$B" "$s") == "${R[$s]}" ]] || fail "$s not at ${R[$s]} on both nodes"
  done
  # The sandbox of SET's pod on NODE that is ready, runs REVISION and has every container running.
  runs_revision() { # node set revision
    local sandbox
    sandbox=$(crictl_on "$1" pods --state ready --label "io.kubernetes.pod.name=$2-$1" -o json |
      jq -r --arg r "$3" '.items[] | select(.annotations["staticpods.dev/revision"] == $r) | .id' | head -n1)
    [[ -n $sandbox && -n $(crictl_on "$1" ps -q --state running --pod "$sandbox") ]] || return 1
    [[ -z $(crictl_on "$1" ps -q --state exited --pod "$sandbox") ]]
  }
  for s in fb-on fb-off; do runs_revision "$A" "$s" "${R[$s]}" || fail "$s's pod of ${R[$s]} not running on $A"; done
  fallbacks_before=$(metric "$A" staticpodset_agent_fallbacks_total)
  ok "fb-on (fallback on, deadline ${FALLBACK_DEADLINE}s) and fb-off Ready on both nodes at their first revision"

  for s in fb-on fb-off; do
    web_set_yaml "$s" '{}' v2 "$(fallback_spec "$([[ $s == fb-on ]] && echo true || echo false)")" | broken | kubectl apply -f - >/dev/null
  done
  new_revision() { local r; r=$(sps_status "$1" updateRevision); [[ -n $r && $r != "${R[$1]}" ]]; }
  for s in fb-on fb-off; do
    wait_for "a new revision of $s" 30 new_revision "$s" || fail "no new revision of $s"
    X[$s]=$(sps_status "$s" updateRevision)
  done
  a_holds_x() { [[ $(file_revision "$A" fb-on) == "${X[fb-on]}" && $(file_revision "$A" fb-off) == "${X[fb-off]}" ]]; }
  wait_for "$A's manifests to hold the broken revisions" 90 a_holds_x ||
    fail "$A's files: fb-on $(file_revision "$A" fb-on), fb-off $(file_revision "$A" fb-off)"
  t_x=$(now)
  stop_api
  t_stop=$SECONDS
  [[ $(file_revision "$B" fb-on) == "${R[fb-on]}" ]] || fail "$B was handed fb-on's new revision before $A"

  fell_back() { [[ $(file_revision "$A" fb-on) == "${R[fb-on]}" ]] && runs_revision "$A" fb-on "${R[fb-on]}"; }
  wait_for "$A to run fb-on's ${R[fb-on]} again" $((FALLBACK_DEADLINE + 30)) fell_back ||
    fail "$A did not fall back to ${R[fb-on]} within $((FALLBACK_DEADLINE + 30))s: file $(file_revision "$A" fb-on), fallbacks $(metric "$A" staticpodset_agent_fallbacks_total)"
  fallback_time=$(since "$t_x")
  ok "API server down: $A runs fb-on's ${R[fb-on]} again ${fallback_time}s after its manifest held ${X[fb-on]} (deadline ${FALLBACK_DEADLINE}s)"

  # fb-off keeps the broken revision for the deadline plus 30 s; B is never touched.
  while ((SECONDS - t_stop < FALLBACK_DEADLINE + 30)); do
    [[ $(file_revision "$A" fb-off) == "${X[fb-off]}" ]] || fail "fb-off was rolled back on $A after $((SECONDS - t_stop))s: $(file_revision "$A" fb-off)"
    for s in fb-on fb-off; do
      [[ $(file_revision "$B" "$s") == "${R[$s]}" ]] || fail "$B's $s changed to $(file_revision "$B" "$s")"
    done
    sleep 1
  done
  metric_is "$A" staticpodset_agent_fallbacks_total $((fallbacks_before + 1)) ||
    fail "$A counted $(metric "$A" staticpodset_agent_fallbacks_total) fallbacks, want $((fallbacks_before + 1))"
  ok "fallback off: fb-off still at ${X[fb-off]} on $A $((FALLBACK_DEADLINE + 30))s after the API server stopped; $B untouched"

  log "starting kube-apiserver again"
  apiserver_start || fail "kube-apiserver did not come back"
  report() { kubectl get nodestaticpods "$A" -o "jsonpath={.status.pods[?(@.setName==\"$1\")].$2}" 2>/dev/null; }
  entry() { kubectl get nodestaticpods "$A" -o "jsonpath={.spec.pods[?(@.setName==\"$1\")].$2}" 2>/dev/null; }
  degraded() { kubectl get sps -n "$E2E_NS" "$1" -o "jsonpath={.status.conditions[?(@.type==\"Degraded\")].$2}" 2>/dev/null; }
  event_count() {
    kubectl get events -n "$E2E_NS" --field-selector "reason=NodeFallback,involvedObject.name=$1,type=Warning" \
      -o jsonpath='{range .items[*]}{.reason}{"\n"}{end}' 2>/dev/null | grep -c NodeFallback
  }
  shown() {
    [[ $(report fb-on fallback.fromRevision) == "${X[fb-on]}" && $(report fb-on fallback.toRevision) == "${R[fb-on]}" &&
       $(entry fb-on lastFailure.reason) == NodeFallback && $(degraded fb-on status) == True ]] && (($(event_count fb-on) >= 1))
  }
  # In-cluster clients reach the API server again only once the kubernetes Service routes to it
  # (on kind, kube-proxy's own watch backs off too): up to 150 s.
  wait_for "fb-on to show the fallback" 150 shown ||
    fail "fb-on after the API server came back: report fallback '$(report fb-on fallback)', lastFailure '$(entry fb-on lastFailure)', Degraded '$(degraded fb-on status)', NodeFallback events $(event_count fb-on)"
  [[ $(file_revision "$A" fb-on) == "${R[fb-on]}" ]] || fail "$A's fb-on went back to $(file_revision "$A" fb-on) once the API server returned"
  ok "API back: fb-on shows it (report ${X[fb-on]} -> ${R[fb-on]}, lastFailure NodeFallback, Degraded: $(degraded fb-on reason), Event NodeFallback); $A still runs ${R[fb-on]}"
  [[ -z $(report fb-off fallback) && $(entry fb-off lastFailure.reason) != NodeFallback ]] ||
    fail "fb-off shows a fallback: '$(report fb-off fallback)', lastFailure '$(entry fb-off lastFailure)'"
  [[ $(file_revision "$A" fb-off) == "${X[fb-off]}" ]] || fail "fb-off on $A is at $(file_revision "$A" fb-off)"
  ok "fb-off shows no fallback and stays at ${X[fb-off]} on $A"
  echo "measure: node-fallback=${fallback_time}s (deadline ${FALLBACK_DEADLINE}s)"
fi

echo "22-node-keeps-truth: $passed passed, 0 failed"
