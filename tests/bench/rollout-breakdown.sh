#!/usr/bin/env bash
# Benchmark (prints numbers; asserts nothing about speed): where the time of a StaticPodSet create
# and update goes, beside the kubelet alone and a DaemonSet of the same pod, in one run.
#
#   floor      hand-written manifests: write them on every node -> every mirror pod Ready; update:
#              on one node, remove the manifest, wait for the mirror pod to go, write the new one
#              -> Ready (the kubelet's own stop-and-start of a static pod of the same name)
#   DaemonSet  apply -> every pod Ready; template change (maxUnavailable 1) -> every pod Ready
#   StaticPodSet  the same, and per node the hops in between (tests/bench/hops.py): revision
#              created, entry written, agent removed/wrote the manifest, kubelet started the
#              container, mirror pod created and Ready, agent report, set status
#   surge      the update again with maxSurge 1 (DaemonSet: maxUnavailable 0; StaticPodSet:
#              maxUnavailable 1, as its default): the new pod starts beside the old one
#
# Needs the local cluster (tests/e2e/cluster/up) and KUBECONFIG; installs the chart itself.
# RUNS (default 5) repetitions; prints each run, then medians. OUT (default a temp dir) keeps the
# raw events and every run's milestones as JSON.
source "$(dirname "${BASH_SOURCE[0]}")/../e2e/lib.sh"

RUNS=${RUNS:-5}
NS=sps-bench
E2E_NS=$NS
OUT=${OUT:-$(mktemp -d /tmp/sps-breakdown.XXXXXX)}
HOPS=$REPO_ROOT/tests/bench/hops.py
export NODES_LIST="${NODES[*]}"
mkdir -p "$OUT"

install_product >/dev/null 2>&1 || die "installing the chart failed"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null

container() { # message
  cat <<YAML
      terminationGracePeriodSeconds: 2
      containers:
      - name: web
        image: $BUSYBOX_IMAGE
        imagePullPolicy: Never
        env: [{name: MESSAGE, value: "$1"}]
        command: ["sh", "-c", "echo \$MESSAGE > /tmp/index.html && exec httpd -f -p 8080 -h /tmp"]
        readinessProbe: {httpGet: {path: /index.html, port: 8080}, periodSeconds: 1}
YAML
}
floor_yaml() {
  cat <<YAML
apiVersion: v1
kind: Pod
metadata: {name: floor-web, namespace: $NS, labels: {app: floor-web}}
spec:
$(container "$1")
YAML
}
ds_yaml() {
  cat <<YAML
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: bench-ds, namespace: $NS}
spec:
  selector: {matchLabels: {app: bench-ds}}
  updateStrategy: {type: RollingUpdate, rollingUpdate: ${DS_ROLLING:-{maxUnavailable: 1\}}}
  template:
    metadata: {labels: {app: bench-ds}}
    spec:
      tolerations: [{operator: Exists}]
$(container "$1")
YAML
}
sps_yaml() {
  cat <<YAML
apiVersion: staticpods.dev/v1alpha1
kind: StaticPodSet
metadata: {name: bench-sps, namespace: $NS}
spec:
  updateStrategy: {rollingUpdate: ${SPS_ROLLING:-{maxUnavailable: 1\}}}
  template:
    metadata: {labels: {app: bench-sps}}
    spec:
$(container "$1")
YAML
}

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", b-a}'; }
export WAIT_FOR_INTERVAL=0.05

python3 "$HOPS" watch "$OUT/events.jsonl" "$NS" &
watcher=$!
trap 'kill $watcher 2>/dev/null || true' EXIT
# The recorder writes a WATCHING line once each of its four watches is open.
watching() { [[ $(grep -c '"WATCHING"' "$OUT/events.jsonl" 2>/dev/null) -ge 4 ]]; }
wait_for "the recorder's watches" 60 watching || die "the recorder did not start its watches"

# Time of the first event in the recording matching a python predicate on e (after T).
event_time() { # T PREDICATE
  python3 - "$OUT/events.jsonl" "$1" "$2" <<'PY'
import json, sys
path, after, pred = sys.argv[1], float(sys.argv[2]), sys.argv[3]
for line in open(path):
    e = json.loads(line)
    o = e.get("object") or {}
    if e["t"] >= after and e["type"] != "WATCHING" and eval(pred, {"e": e, "o": o}):
        print(e["t"]); break
PY
}
ready_expr() { # pod name
  echo "o.get('kind')=='Pod' and e['type']!='DELETED' and o['metadata']['name']=='$1' and any(c.get('type')=='Ready' and c.get('status')=='True' for c in (o.get('status') or {}).get('conditions') or [])"
}
deleted_expr() { echo "o.get('kind')=='Pod' and e['type']=='DELETED' and o['metadata']['name']=='$1'"; }

mirror_ready_after() { [[ -n $(event_time "$1" "$(ready_expr "$2")") ]]; }
mirror_gone_after() { [[ -n $(event_time "$1" "$(deleted_expr "$2")") ]]; }

ds_done() {
  local s
  s=$(kubectl get ds -n "$NS" bench-ds -o jsonpath='{.status.observedGeneration} {.status.updatedNumberScheduled} {.status.numberAvailable} {.status.desiredNumberScheduled}')
  [[ $s == "$1 ${#NODES[@]} ${#NODES[@]} ${#NODES[@]}" ]]
}
sps_done() {
  local gen s
  gen=$(kubectl get sps -n "$NS" bench-sps -o jsonpath='{.metadata.generation}')
  s=$(kubectl get sps -n "$NS" bench-sps -o jsonpath='{.status.observedGeneration} {.status.updatedNumberScheduled} {.status.numberAvailable} {.status.conditions[?(@.type=="Progressing")].reason}')
  [[ $s == "$gen ${#NODES[@]} ${#NODES[@]} RolloutComplete" ]]
}

# collect_logs DIR T: the operator's and agents' logs since T, with the kubelet's receive times,
# and the start time of each node's newest bench-sps container.
collect_logs() {
  local dir=$1 n pod id
  mkdir -p "$dir"
  kubectl logs -n "$RELEASE_NS" deploy/"$RELEASE"-staticpodset-operator --timestamps --since=10m \
    >"$dir/operator.log" 2>/dev/null || true
  for n in "${NODES[@]}"; do
    pod=$(kubectl get pods -n "$RELEASE_NS" -l app.kubernetes.io/component=node-agent \
      --field-selector "spec.nodeName=$n" -o jsonpath='{.items[0].metadata.name}')
    kubectl logs -n "$RELEASE_NS" "$pod" --timestamps --since=10m >"$dir/agent-$n.log" 2>/dev/null || true
    id=$(crictl_on "$n" ps -q --name web --label "io.kubernetes.pod.name=bench-sps-$n" --state running 2>/dev/null | head -n1)
    [[ -n $id ]] && crictl_on "$n" inspect -o go-template --template '{{.status.startedAt}}' "$id" \
      >"$dir/started-$n" 2>/dev/null
  done
}

declare -a floor_create floor_update ds_create ds_update sps_create sps_update ds_surge sps_surge
A=${NODES[0]}
for run in $(seq 1 "$RUNS"); do
  kubectl delete ds -n "$NS" bench-ds --wait=true --ignore-not-found >/dev/null
  kubectl delete sps -n "$NS" bench-sps --wait=true --ignore-not-found >/dev/null
  for n in "${NODES[@]}"; do rm -f "$(static_pod_dir "$n")/floor-web.yaml"; done
  wait_for "pods of the previous run gone" 120 bash -c "[[ -z \$(kubectl get pods -n $NS -o name) ]]" ||
    die "pods of the previous run still there"

  # The kubelet alone.
  t=$(now)
  for n in "${NODES[@]}"; do floor_yaml v1 >"$(static_pod_dir "$n")/.floor-web.tmp" && mv "$(static_pod_dir "$n")/.floor-web.tmp" "$(static_pod_dir "$n")/floor-web.yaml"; done
  last=$t
  for n in "${NODES[@]}"; do
    wait_for "floor pod Ready on $n" 120 mirror_ready_after "$t" "floor-web-$n" || die "floor pod not Ready on $n"
    r=$(event_time "$t" "$(ready_expr "floor-web-$n")")
    last=$(awk -v a="$last" -v b="$r" 'BEGIN{print (b>a?b:a)}')
  done
  floor_create+=("$(since "$t" "$last")")
  t=$(now)
  rm -f "$(static_pod_dir "$A")/floor-web.yaml"
  wait_for "floor pod gone on $A" 120 mirror_gone_after "$t" "floor-web-$A" || die "floor pod not stopped"
  floor_yaml v2 >"$(static_pod_dir "$A")/.floor-web.tmp" && mv "$(static_pod_dir "$A")/.floor-web.tmp" "$(static_pod_dir "$A")/floor-web.yaml"
  t2=$(now)
  wait_for "floor pod Ready again on $A" 120 mirror_ready_after "$t2" "floor-web-$A" || die "floor pod not back"
  floor_update+=("$(since "$t" "$(event_time "$t2" "$(ready_expr "floor-web-$A")")")")
  for n in "${NODES[@]}"; do rm -f "$(static_pod_dir "$n")/floor-web.yaml"; done

  # A DaemonSet.
  t=$(now); ds_yaml v1 | kubectl apply -f - >/dev/null
  wait_for "DaemonSet create" 300 ds_done 1 || die "DaemonSet create did not finish"
  ds_create+=("$(since "$t" "$(now)")")
  t=$(now); ds_yaml v2 | kubectl apply -f - >/dev/null
  wait_for "DaemonSet update" 300 ds_done 2 || die "DaemonSet update did not finish"
  ds_update+=("$(since "$t" "$(now)")")
  kubectl delete ds -n "$NS" bench-ds --wait=true >/dev/null

  # A StaticPodSet, hop by hop.
  t=$(now); sps_yaml v1 | kubectl apply -f - >/dev/null
  wait_for "StaticPodSet create" 300 sps_done || die "StaticPodSet create did not finish"
  sps_create+=("$(since "$t" "$(now)")")
  rev=$(kubectl get sps -n "$NS" bench-sps -o jsonpath='{.status.updateRevision}')
  collect_logs "$OUT/run$run-create" "$t"
  python3 "$HOPS" analyze "$OUT/events.jsonl" "$NS" bench-sps "$t" "$rev" "$OUT/run$run-create" >"$OUT/run$run-create.json"
  t=$(now); sps_yaml v2 | kubectl apply -f - >/dev/null
  wait_for "StaticPodSet update to start" 60 bash -c "[[ \$(kubectl get sps -n $NS bench-sps -o jsonpath='{.status.updateRevision}') != $rev ]]" ||
    die "the update did not start"
  wait_for "StaticPodSet update" 300 sps_done || die "StaticPodSet update did not finish"
  sps_update+=("$(since "$t" "$(now)")")
  rev=$(kubectl get sps -n "$NS" bench-sps -o jsonpath='{.status.updateRevision}')
  collect_logs "$OUT/run$run-update" "$t"
  python3 "$HOPS" analyze "$OUT/events.jsonl" "$NS" bench-sps "$t" "$rev" "$OUT/run$run-update" >"$OUT/run$run-update.json"
  kubectl delete sps -n "$NS" bench-sps --wait=true >/dev/null

  # Both again, updated with surge.
  export DS_ROLLING="{maxSurge: 1, maxUnavailable: 0}" SPS_ROLLING="{maxSurge: 1, maxUnavailable: 1}"
  ds_yaml v1 | kubectl apply -f - >/dev/null
  wait_for "DaemonSet create" 300 ds_done 1 || die "DaemonSet create did not finish"
  t=$(now); ds_yaml v2 | kubectl apply -f - >/dev/null
  wait_for "DaemonSet surge update" 300 ds_done 2 || die "DaemonSet surge update did not finish"
  ds_surge+=("$(since "$t" "$(now)")")
  kubectl delete ds -n "$NS" bench-ds --wait=true >/dev/null
  sps_yaml v1 | kubectl apply -f - >/dev/null
  wait_for "StaticPodSet create" 300 sps_done || die "StaticPodSet create did not finish"
  rev=$(kubectl get sps -n "$NS" bench-sps -o jsonpath='{.status.updateRevision}')
  t=$(now); sps_yaml v2 | kubectl apply -f - >/dev/null
  wait_for "StaticPodSet surge update to start" 60 bash -c "[[ \$(kubectl get sps -n $NS bench-sps -o jsonpath='{.status.updateRevision}') != $rev ]]" ||
    die "the surge update did not start"
  wait_for "StaticPodSet surge update" 300 sps_done || die "StaticPodSet surge update did not finish"
  sps_surge+=("$(since "$t" "$(now)")")
  unset DS_ROLLING SPS_ROLLING
  echo "run $run: floor create ${floor_create[-1]}s update-one-node ${floor_update[-1]}s | DaemonSet create ${ds_create[-1]}s update ${ds_update[-1]}s surge ${ds_surge[-1]}s | StaticPodSet create ${sps_create[-1]}s update ${sps_update[-1]}s surge ${sps_surge[-1]}s"
done
kubectl delete sps -n "$NS" bench-sps --wait=true --ignore-not-found >/dev/null
kubectl delete namespace "$NS" --wait=false >/dev/null

python3 - "$OUT" "$RUNS" "${NODES[@]}" <<'PY'
import json, statistics, sys
out, runs, nodes = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def med(xs):
    xs = [x for x in xs if x is not None]
    return f"{statistics.median(xs):6.2f}" if xs else "     -"
for phase in ("create", "update"):
    data = [json.load(open(f"{out}/run{r}-{phase}.json")) for r in range(1, runs + 1)]
    print(f"\nStaticPodSet {phase}: seconds since kubectl apply (median of {runs})")
    print(f"{'milestone':38s}" + "".join(f"{n:>12s}" for n in nodes))
    for key in data[0]["set"]:
        print(f"{key:38s}{med([d['set'][key] for d in data]):>12s}")
    keys = list(data[0]["nodes"][nodes[0]].keys())
    order = sorted(keys, key=lambda k: statistics.median([v for v in (d["nodes"][nodes[0]][k] for d in data) if v is not None] or [1e9]))
    for key in order:
        print(f"{key:38s}" + "".join(f"{med([d['nodes'][n][key] for d in data]):>12s}" for n in nodes))
PY

median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END{print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'; }
fc=$(median "${floor_create[@]}") fu=$(median "${floor_update[@]}")
dc=$(median "${ds_create[@]}") du=$(median "${ds_update[@]}")
sc=$(median "${sps_create[@]}") su=$(median "${sps_update[@]}")
dg=$(median "${ds_surge[@]}") sg=$(median "${sps_surge[@]}")
echo
echo "nodes: ${#NODES[@]}, runs: $RUNS, medians (seconds); raw data in $OUT"
printf '%-8s %14s %10s %13s %18s\n' phase "kubelet alone" DaemonSet StaticPodSet "StaticPodSet/DS"
printf '%-8s %14s %10s %13s %18s\n' create "$fc" "$dc" "$sc" "$(ratio "$sc" "$dc")"
printf '%-8s %14s %10s %13s %18s\n' update "$fu/node" "$du" "$su" "$(ratio "$su" "$du")"
printf '%-8s %14s %10s %13s %18s\n' surge - "$dg" "$sg" "$(ratio "$sg" "$dg")"
echo "(update: maxUnavailable 1, each node stops its pod then starts the new one; surge: maxSurge 1,"
echo " the new pod starts beside the old one, which goes once the new one is available: no outage)"
