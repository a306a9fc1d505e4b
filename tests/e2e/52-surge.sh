#!/usr/bin/env bash
# maxSurge on the real two-node cluster: a node updates without an outage.
#   1. admission: with maxSurge, a hostPort (or hostNetwork with declared ports) is refused
#   2. a hostNetwork set (SO_REUSEPORT web server, one port per node, net.ipv4.tcp_migrate_req=1
#      for the suite) with maxSurge 1 at revision 1
#   3. new template: every node runs two pods of the set at once (`<set>-<node>` beside
#      `<set>-surge-<node>`), no HTTP poll of any node fails, status.numberAvailable never drops
#      below 2; the old manifest and mirror pod are gone afterwards, the counts are 2 2 2 2 2 0
#   4. the next update uses the first name again
#   5. a revision that never becomes Ready: the old pod keeps serving beside it (no failed poll),
#      the rollout halts at the deadline; a rollback (staticpods.dev/rollback-to) removes the
#      failed pod and keeps the serving one
#   6. deleting the set removes both names' manifests and mirror pods
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SET=edge
WATCH_OUT=$RUN_DIR/surge-watch.json
watcher=""
declare -A PORT ADDRESS
i=0
for n in "${NODES[@]}"; do i=$((i + 1)); PORT[$n]=$((18180 + i)); ADDRESS[$n]=$(node_address "$n"); done
LISTEN=$(node_listen_address)

# Connections queued at the old pod's socket when it closes would be reset; with
# tcp_migrate_req the kernel hands them to the new pod's socket in the same SO_REUSEPORT group,
# which is what docs/rollouts.md tells users of hostNetwork pods to set.
MIGRATE=/proc/sys/net/ipv4/tcp_migrate_req
declare -A migrate_before
for n in "${NODES[@]}"; do migrate_before[$n]=$(node_run "$n" cat "$MIGRATE"); done
for n in "${NODES[@]}"; do node_run "$n" sh -c "echo 1 >$MIGRATE"; done

cleanup() {
  local n
  for n in "${NODES[@]}"; do node_run "$n" sh -c "echo ${migrate_before[$n]} >$MIGRATE" || true; done
  if [[ -n $watcher ]]; then kill "$watcher" 2>/dev/null || true; fi
  kubectl delete sps -n "$E2E_NS" "$SET" --ignore-not-found --wait=true --timeout=120s >/dev/null 2>&1 || true
}
trap cleanup EXIT

install_product
ensure_e2e_namespace
# A set of this name left by an interrupted run must be gone, with its manifests, before we start.
kubectl delete sps -n "$E2E_NS" "$SET" --ignore-not-found --wait=true --timeout=120s >/dev/null ||
  fail "a set $SET left from an earlier run cannot be deleted"

ports_case() {
  local n out=""
  for n in "${NODES[@]}"; do out+="$n) P=${PORT[$n]};; "; done
  echo "$out"
}

# set_yaml MESSAGE [IMAGE] [DEADLINE]: the pod serves MESSAGE on $LISTEN:<its node's port>, with
# SO_REUSEPORT so that two pods of the set can listen at once.
set_yaml() {
  cat <<YAML
apiVersion: staticpods.dev/v1alpha1
kind: StaticPodSet
metadata: {name: $SET, namespace: $E2E_NS}
spec:
  minReadySeconds: 2
  progressDeadlineSeconds: ${3:-120}
  updateStrategy: {rollingUpdate: {maxSurge: 1, maxUnavailable: 1}}
  template:
    metadata: {labels: {app: $SET}}
    spec:
      hostNetwork: true
      terminationGracePeriodSeconds: 5
      containers:
      - name: web
        image: ${2:-$WEB_IMAGE}
        imagePullPolicy: Never
        env:
        - {name: MESSAGE, value: "$1"}
        - {name: NODE, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
        command: ["sh", "-c", "case \$NODE in $(ports_case) esac; echo \$MESSAGE > /tmp/index.html && exec web $LISTEN:\$P /tmp/index.html /tmp/listening"]
        readinessProbe:
          exec: {command: [cat, /tmp/listening]}
          periodSeconds: 1
YAML
}

jp() { kubectl get sps -n "$E2E_NS" "$SET" -o "jsonpath=$1" 2>/dev/null; }
cond() { jp "{.status.conditions[?(@.type==\"$1\")].$2}"; }
revision() { jp '{.status.updateRevision}'; }
new_revision() { local r; r=$(revision); [[ -n $r && $r != "$1" ]]; }
counts() { jp '{.status.desiredNumberScheduled} {.status.currentNumberScheduled} {.status.numberReady} {.status.updatedNumberScheduled} {.status.numberAvailable} {.status.numberUnavailable}'; }
complete_at() {
  [[ $(revision) == "$1" && $(jp '{.status.currentRevision}') == "$1" && $(cond Progressing reason) == RolloutComplete &&
     $(counts) == "2 2 2 2 2 0" ]]
}
primary_file() { echo "staticpodset_${E2E_NS}_$SET.yaml"; }
surge_file() { echo "staticpodset_${E2E_NS}_${SET}_surge.yaml"; }
# The set's manifests on node N, by name, space-separated.
files_on() {
  local names
  names=$(node_ls "$1" manifests "staticpodset_${E2E_NS}_$SET.yaml staticpodset_${E2E_NS}_${SET}_*.yaml")
  echo "${names//$'\n'/ }"
}
file_rev() { manifest_revision "$1" "$2"; }
serves() { # message: every node answers with it
  local n
  for n in "${NODES[@]}"; do
    [[ $(curl -s --max-time 1 "http://${ADDRESS[$n]}:${PORT[$n]}/") == "$1" ]] || return 1
  done
}
# only_name NAME: on every node, only the set's manifest NAME (primary or surge) and only its
# mirror pod remain.
only_name() {
  local n want mirror other
  case $1 in
    primary) want=$(primary_file) mirror=$SET other=$SET-surge ;;
    surge) want=$(surge_file) mirror=$SET-surge other=$SET ;;
  esac
  for n in "${NODES[@]}"; do
    [[ $(files_on "$n") == "$want" ]] || return 1
    mirror_ready "$E2E_NS" "$mirror-$n" || return 1
    ! kubectl get pod -n "$E2E_NS" "$other-$n" >/dev/null 2>&1 || return 1
  done
}

start_watch() {
  local primed=$RUN_DIR/surge-watch.primed targets=() n
  rm -f "$primed"
  for n in "${NODES[@]}"; do targets+=("$n=http://${ADDRESS[$n]}:${PORT[$n]}/"); done
  PRIMED_FILE=$primed KUBECTL=$(command -v kubectl) python3 "$REPO_ROOT/tests/e2e/surge-watch.py" \
    "$E2E_NS" "$SET" "${targets[@]}" >"$WATCH_OUT" &
  watcher=$!
  wait_for "watcher to see every node serve" 30 test -e "$primed" || fail "surge-watch.py did not see every node serve"
}
# stop_watch: ends the watcher; its summary is then in $WATCH_OUT.
stop_watch() {
  kill "$watcher"; wait "$watcher" 2>/dev/null || true; watcher=""
}

# --- 1. admission ------------------------------------------------------------------------------
refused() { # yaml: the API server refuses it, naming maxSurge
  local out
  if out=$(kubectl apply --dry-run=server -f - 2>&1 <<<"$1"); then return 1; fi
  grep -q "maxSurge" <<<"$out" || { log "refused without naming maxSurge: $out"; return 1; }
}
base=$(set_yaml v1)
pull=$'        imagePullPolicy: Never\n'
host_port=${base/$'      hostNetwork: true\n'/$'      hostNetwork: false\n'}
host_port=${host_port/$pull/$pull$'        ports: [{containerPort: 8080, hostPort: 18080}]\n'}
declared=${base/$pull/$pull$'        ports: [{containerPort: 18181}]\n'}
refused "$host_port" || fail "a hostPort with maxSurge was not refused"
refused "$declared" || fail "hostNetwork with a declared port and maxSurge was not refused"
kubectl apply --dry-run=server -f - >/dev/null <<<"${host_port/maxSurge: 1/maxSurge: 0}" ||
  fail "a hostPort without surge (maxSurge 0) was refused"
ok "admission: with maxSurge, hostPort and hostNetwork with declared ports are refused; maxSurge 0 accepts them"

# --- 2. revision 1 --------------------------------------------------------------------------------
set_yaml v1 | kubectl apply -f - >/dev/null
wait_for "revision 1 on both nodes" 180 serves v1 || fail "v1 not served: $(jp '{.status}')"
rev1=$(revision)
wait_for "rollout of revision 1 complete" 120 complete_at "$rev1" || fail "revision 1 incomplete: $(counts) $(jp '{.status.conditions}')"
only_name primary || fail "revision 1 is not under the first name: $(for n in "${NODES[@]}"; do files_on "$n"; done)"
[[ $(kubectl get nodestaticpods "${NODES[0]}" -o "jsonpath={.spec.pods[?(@.setName==\"$SET\")].surgeMinReadySeconds}") == 2 ]] ||
  fail "the entry does not carry surgeMinReadySeconds 2"
ok "revision $rev1 Ready on both nodes as $SET-<node> from $(primary_file)"

# --- 3. a surge update ---------------------------------------------------------------------------
start_watch
t0=$SECONDS
set_yaml v2 | kubectl apply -f - >/dev/null
wait_for "new revision" 30 new_revision "$rev1" || fail "no new revision after a template change"
rev2=$(revision)
wait_for "revision 2 rolled out" 240 complete_at "$rev2" || fail "revision 2 incomplete: $(counts) $(jp '{.status.conditions}')"
wait_for "only the surge name left" 60 only_name surge ||
  fail "old manifests or mirror pods left: $(for n in "${NODES[@]}"; do echo "$n: $(files_on "$n")"; done)"
took=$((SECONDS - t0))
stop_watch
summary=$(cat "$WATCH_OUT")
log "watcher: $summary"
python3 - "$summary" "$SET" "${NODES[@]}" <<'PY' || fail "surge update not as promised: $summary"
import json, sys
s, set_name, nodes = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3:]
for n in nodes:
    h = s["http"][n]
    assert h["failed"] == 0, f"{n}: {h['failed']} HTTP polls failed"
    assert h["bodies"] == ["v1", "v2"], f"{n} answered {h['bodies']}"
    assert s["pods_at_once"][n] == 2, f"{n} never ran two pods at once"
    assert f"{set_name}-surge-{n}" in s["names"], f"no mirror pod {set_name}-surge-{n}"
assert s["min_available"] == s["desired"] == len(nodes), f"numberAvailable fell to {s['min_available']}"
PY
polls=$(python3 -c 'import json,sys; s=json.loads(sys.argv[1]); print(sum(h["ok"] for h in s["http"].values()))' "$summary")
ok "surge update to $rev2 in ${took}s: two pods per node at once, $polls HTTP polls and 0 failures, numberAvailable never below 2; now $SET-surge-<node> from $(surge_file), counts $(counts)"

# --- 4. the next update goes back to the first name ---------------------------------------------
start_watch
set_yaml v3 | kubectl apply -f - >/dev/null
wait_for "new revision" 30 new_revision "$rev2" || fail "no new revision after a template change"
rev3=$(revision)
wait_for "revision 3 rolled out" 240 complete_at "$rev3" || fail "revision 3 incomplete: $(counts)"
wait_for "only the first name left" 60 only_name primary || fail "left: $(for n in "${NODES[@]}"; do echo "$n: $(files_on "$n")"; done)"
stop_watch
summary=$(cat "$WATCH_OUT")
python3 - "$summary" <<'PY' || fail "second surge update failed polls: $summary"
import json, sys
s = json.loads(sys.argv[1])
assert all(h["failed"] == 0 and h["bodies"][-1] == "v3" for h in s["http"].values()), s["http"]
PY
ok "the next update ($rev3) runs under the first name again, no failed poll"

# --- 5. a revision that never becomes Ready, then a rollback ----------------------------------
rev3_number=$(jp '{.status.updateRevisionNumber}')
start_watch
t0=$SECONDS
set_yaml v4 docker.io/library/staticpodset-no-such-image:1 20 | kubectl apply -f - >/dev/null
wait_for "new revision" 30 new_revision "$rev3" || fail "no new revision for the broken template"
bad=$(revision)
halted() { [[ $(cond Progressing reason) == ProgressDeadlineExceeded ]]; }
wait_for "rollout halted" 120 halted || fail "not halted: $(jp '{.status.conditions}')"
halted_after=$((SECONDS - t0))
first=""
for n in "${NODES[@]}"; do
  [[ $(files_on "$n") == "$(primary_file) $(surge_file)" ]] && first=$n
done
[[ -n $first ]] || fail "no node runs the broken revision beside the old one: $(for n in "${NODES[@]}"; do echo "$n: $(files_on "$n")"; done)"
[[ $(file_rev "$first" "$(surge_file)") == "$bad" && $(file_rev "$first" "$(primary_file)") == "$rev3" ]] ||
  fail "on $first: surge file at $(file_rev "$first" "$(surge_file)"), first at $(file_rev "$first" "$(primary_file)")"
[[ $(counts) == "2 2 2 0 2 0" ]] || fail "counts while the old pods serve: $(counts)"
kubectl annotate sps -n "$E2E_NS" "$SET" "staticpods.dev/rollback-to=$rev3_number" --overwrite >/dev/null
wait_for "rolled back" 120 complete_at "$rev3" || fail "rollback to $rev3 incomplete: $(counts) $(jp '{.status.conditions}')"
wait_for "the failed pod removed" 60 only_name primary ||
  fail "after the rollback: $(for n in "${NODES[@]}"; do echo "$n: $(files_on "$n")"; done)"
stop_watch
summary=$(cat "$WATCH_OUT")
log "watcher: $summary"
python3 - "$summary" <<'PY' || fail "the old pod did not keep serving: $summary"
import json, sys
s = json.loads(sys.argv[1])
assert all(h["failed"] == 0 and h["bodies"] == ["v3"] for h in s["http"].values()), s["http"]
assert s["min_available"] == s["desired"], f"numberAvailable fell to {s['min_available']}"
PY
ok "revision $bad never Ready on $first: halted after ${halted_after}s with counts 2 2 2 0 2 0 while the old pod served; rollback to #$rev3_number removed it; no failed poll"

# --- 6. deletion removes both names --------------------------------------------------------------
set_yaml v5 | kubectl apply -f - >/dev/null
two_files() { local n; for n in "${NODES[@]}"; do [[ $(files_on "$n") == *" "* ]] && return 0; done; return 1; }
# Deleted while a surge may be under way: both names must go.
wait_for "a surge under way" 60 two_files || fail "no node seen with both manifests"
kubectl delete sps -n "$E2E_NS" "$SET" --wait=true --timeout=120s >/dev/null || fail "set not deleted"
gone() {
  local n
  for n in "${NODES[@]}"; do
    [[ -z $(files_on "$n") ]] || return 1
    ! kubectl get pod -n "$E2E_NS" "$SET-$n" "$SET-surge-$n" -o name 2>/dev/null | grep -q . || return 1
  done
}
wait_for "both names gone" 90 gone || fail "left after deletion: $(for n in "${NODES[@]}"; do echo "$n: $(files_on "$n")"; done)"
ok "deleting the set removed both names' manifests and mirror pods on every node"

echo "52-surge: $passed passed, 0 failed"
