#!/usr/bin/env bash
# The operator at scale against a real, throw-away kube-apiserver: N fake Nodes kept Ready by kwok,
# their agents played by one staticpodset-fleet-sim process, the real operator binary with its RBAC
# user and leader election, and kube-controller-manager (daemonset, nodelifecycle, garbagecollector)
# with kube-scheduler for the DaemonSet baseline on the same nodes. Phases, each measured (API requests by verb and
# resource, mutating p99, writes by user from the audit log, operator CPU and RSS from /proc):
#
#   idle -> background sets (SETS-1 of them) -> apply: one set over every node (entries written,
#   all Ready) -> the same pod as a DaemonSet -> rollout of both (maxUnavailable 10%) -> operator
#   restart (ready, then quiet) -> steady state (STEADY seconds) -> sizes -> delete everything.
#
# Usage: SHAPE=small|1k|5k|5k200 bash tests/scale/bench-scale.sh   (or make bench-scale SHAPE=...)
#   SHAPE=small   300 nodes x 10 sets      1k   1,000 x 20      5k   5,000 x 20
#   SHAPE=5k200   5,000 nodes x 200 sets, each of 199 selecting a tenth of the nodes (~20 per node)
# CHECK=1 asserts correctness only (tests/scale/small.sh): every entry written, all Ready, rollouts
# complete, nothing left after deletion; no timing is judged. Other knobs: NODES, SETS, SLICES,
# READY_DELAY (2s: simulated mirror pods and kwok's DaemonSet pods alike), FAILURE_FRACTION (0),
# STEADY (60), PROFILE
# (release|debug), OUT (results dir), PPROF_PHASES ("apply rollout": the API server's CPU profile,
# PPROF_SECONDS (30) from the start of each phase named, its top functions kept with the results),
# OPERATOR_ENV ("NAME=value ...", added to the operator's environment only),
# API_PORT (26443), ETCD_PORT (22379), PEER_PORT (22380), KEEP=1 keeps the work directory.
# Needs etcd, kube-apiserver, kube-controller-manager, kubectl in $STATICPODSET_CACHE (see
# tests/e2e/cluster/build/components.sh) and kwok (tests/scale/build-kwok.sh, run from here).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE=$ROOT/tests/scale
# shellcheck source=../e2e/cluster/versions.sh
source "$ROOT/tests/e2e/cluster/versions.sh"
CACHE=${STATICPODSET_CACHE:-$HOME/.cache/staticpodset}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/target}
K8S_BIN=$CACHE/k8s-$K8S_VERSION/bin
APISERVER=${APISERVER:-$K8S_BIN/kube-apiserver}
KCM=${KCM:-$K8S_BIN/kube-controller-manager}
SCHEDULER=${SCHEDULER:-$K8S_BIN/kube-scheduler}
ETCD=${ETCD:-$CACHE/tools/bin/etcd}
ETCDCTL=${ETCDCTL:-$CACHE/tools/bin/etcdctl}
KWOK=${KWOK:-$CACHE/tools/bin/kwok}
KUBECTL=${KUBECTL:-$K8S_BIN/kubectl}
CHECK=${CHECK:-0}
SHAPE=${SHAPE:-small}
case $SHAPE in
  small) nodes=300 sets=10 slices=1 ;;
  1k) nodes=1000 sets=20 slices=1 ;;
  5k) nodes=5000 sets=20 slices=1 ;;
  5k200) nodes=5000 sets=200 slices=10 ;;
  *) echo "unknown SHAPE=$SHAPE (small, 1k, 5k, 5k200)" >&2; exit 2 ;;
esac
NODES=${NODES:-$nodes} SETS=${SETS:-$sets} SLICES=${SLICES:-$slices}
READY_DELAY=${READY_DELAY:-2s} FAILURE_FRACTION=${FAILURE_FRACTION:-0}
STEADY=${STEADY:-60} PROFILE=${PROFILE:-release}
# delay_ms DURATION (2s, 500ms, 1m): the duration in milliseconds.
delay_ms() {
  python3 -c "import re,sys; m=re.fullmatch(r'([0-9.]+)(ms|s|m)?', sys.argv[1]); print(int(float(m[1]) * {'ms': 1, 's': 1000, 'm': 60000, None: 1000}[m[2]]))" "$1"
}
API_PORT=${API_PORT:-26443} ETCD_PORT=${ETCD_PORT:-22379} PEER_PORT=${PEER_PORT:-22380}
KCM_PORT=${KCM_PORT:-20257} SCHED_PORT=${SCHED_PORT:-20259} OP_PORT=${OP_PORT:-29101} KWOK_PORT=${KWOK_PORT:-20247}
OUT=${OUT:-$HERE/results}
PREFIX=sim-

for port in "$API_PORT" "$ETCD_PORT" "$PEER_PORT" "$KCM_PORT" "$SCHED_PORT" "$OP_PORT" "$KWOK_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is in use; choose another (API_PORT, ETCD_PORT, ...)" >&2
    exit 1
  fi
done
bash "$HERE/build-kwok.sh" >/dev/null
missing=()
for bin in "$APISERVER" "$KCM" "$SCHEDULER" "$ETCD" "$KWOK" "$KUBECTL"; do
  [[ -x $bin ]] || missing+=("$bin")
done
if ((${#missing[@]})); then
  echo "FAIL: not found: ${missing[*]} (bash tests/e2e/cluster/build/components.sh builds them)" >&2
  exit 1
fi
if [[ $PROFILE == release ]]; then
  # Exactly the build images/build.sh makes, so that after it (as in make test) nothing compiles.
  TARGET=x86_64-unknown-linux-gnu
  (cd "$ROOT" && RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release --locked \
    --target "$TARGET" -p staticpodset-operator -p staticpodset-node-agent)
  BIN=$CARGO_TARGET_DIR/$TARGET/release
else
  (cd "$ROOT" && cargo build -q -p staticpodset-operator -p staticpodset-node-agent \
    --bin staticpodset-operator --bin staticpodset-fleet-sim)
  BIN=$CARGO_TARGET_DIR/debug
fi

WORK=$(mktemp -d /tmp/sps-scale.XXXXXX)
export KUBECONFIG=$WORK/admin.kubeconfig
PIDS=()
passed=0 failed=0
log() { echo "[$(date -u +%T)] $*"; }
ok() { passed=$((passed + 1)); log "ok: $*"; }
fail() { failed=$((failed + 1)); log "FAIL: $*"; }
die() { fail "$*"; exit 1; }
OPERATOR_PID=
stop_operator() {
  if [[ -n ${OPERATOR_PID:-} ]] && kill -0 "$OPERATOR_PID" 2>/dev/null; then
    kill "$OPERATOR_PID" 2>/dev/null || true
    local end=$((SECONDS + 25))
    while kill -0 "$OPERATOR_PID" 2>/dev/null && ((SECONDS < end)); do sleep 0.2; done
    kill -KILL "$OPERATOR_PID" 2>/dev/null || true
    wait "$OPERATOR_PID" 2>/dev/null || true
  fi
  OPERATOR_PID=
}
cleanup() {
  local rc=$?
  set +e
  if [[ $rc != 0 || $failed != 0 ]]; then
    echo "--- operator log (tail)"; tail -n 20 "$WORK/operator.log" 2>/dev/null || true
    echo "--- fleet-sim log (tail)"; tail -n 5 "$WORK/sim.log" 2>/dev/null || true
  fi
  stop_operator
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ ${KEEP:-0} == 1 ]]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
  echo "$passed passed, $failed failed"
  if [[ $rc != 0 || $failed != 0 ]]; then exit 1; fi
}
trap cleanup EXIT
k() { "$KUBECTL" "$@"; }
now() { date +%s.%N; }
# until_true SECONDS DESCRIPTION COMMAND...: polls COMMAND every second; fails after SECONDS.
until_true() {
  local limit=$1 what=$2 end; shift 2
  end=$((SECONDS + limit))
  until "$@"; do
    ((SECONDS < end)) || die "$what (not within ${limit}s)"
    sleep 1
  done
}

# --- etcd and the API server ---------------------------------------------------------------------
cd "$WORK"
mkdir pki
openssl req -x509 -newkey rsa:2048 -nodes -keyout pki/ca.key -out pki/ca.crt -days 1 -subj /CN=scale-ca \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout pki/server.key -out pki/server.csr -subj /CN=127.0.0.1 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >pki/ext.cnf
openssl x509 -req -in pki/server.csr -CA pki/ca.crt -CAkey pki/ca.key -CAcreateserial -days 1 \
  -extfile pki/ext.cnf -out pki/server.crt 2>/dev/null
openssl genrsa -out pki/sa.key 2048 2>/dev/null
openssl rsa -in pki/sa.key -pubout -out pki/sa.pub 2>/dev/null
# One user per client, so the audit log tells whose writes they are.
cat >pki/tokens.csv <<'EOF'
admin-token,admin,1,"system:masters"
operator-token,sps-operator,2
sim-token,sps-fleet-sim,3,"system:masters"
kwok-token,kwok,4,"system:masters"
kcm-token,kube-controller-manager,5,"system:masters"
scheduler-token,kube-scheduler,6,"system:masters"
EOF
# Writes by everyone, and every request of the operator; metadata only.
cat >audit-policy.yaml <<'EOF'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
- level: Metadata
  users: [sps-operator]
- level: Metadata
  verbs: [create, update, patch, delete, deletecollection]
- level: None
EOF
"$ETCD" --name scale --data-dir "$WORK/etcd" --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" --listen-peer-urls "http://127.0.0.1:$PEER_PORT" \
  --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
  --initial-cluster "scale=http://127.0.0.1:$PEER_PORT" --quota-backend-bytes 8589934592 \
  --listen-metrics-urls "http://127.0.0.1:$((ETCD_PORT + 2))" >etcd.log 2>&1 &
PIDS+=($!)
# Inflight limits as a control plane sized for thousands of nodes would set them (the defaults are
# 400/200); API Priority and Fairness shares them out as it does by default.
"$APISERVER" --etcd-servers "http://127.0.0.1:$ETCD_PORT" --bind-address 127.0.0.1 --secure-port "$API_PORT" \
  --advertise-address 127.0.0.1 --tls-cert-file pki/server.crt --tls-private-key-file pki/server.key \
  --token-auth-file pki/tokens.csv --authorization-mode RBAC --service-account-issuer "https://127.0.0.1:$API_PORT" \
  --service-account-key-file pki/sa.pub --service-account-signing-key-file pki/sa.key \
  --service-cluster-ip-range 10.253.0.0/24 --disable-admission-plugins ServiceAccount \
  --max-requests-inflight 800 --max-mutating-requests-inflight 400 \
  --audit-policy-file audit-policy.yaml --audit-log-path "$WORK/audit.log" --audit-log-mode batch \
  --audit-log-maxsize 0 >apiserver.log 2>&1 &
PIDS+=($!)
for user in admin operator sim kwok kcm scheduler; do
  cat >"$user.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: t, cluster: {server: "https://127.0.0.1:$API_PORT", certificate-authority: $WORK/pki/ca.crt}}]
users: [{name: u, user: {token: $user-token}}]
contexts: [{name: c, context: {cluster: t, user: u}}]
current-context: c
EOF
done
api_ready() { k get --raw /readyz >/dev/null 2>&1; }
until_true 120 "API server ready" api_ready
ok "API server ready on 127.0.0.1:$API_PORT"
metrics() { k get --raw /metrics >"$1"; }

# --- nodes, kwok, kube-controller-manager --------------------------------------------------------
k apply --server-side -f "$ROOT/crds/" >crds.log 2>&1 || { cat crds.log >&2; die "CRDs not installed"; }
crds_established() {
  k wait --for condition=Established --timeout=5s crd/staticpodsets.staticpods.dev \
    crd/nodestaticpods.staticpods.dev crd/staticpodrevisions.staticpods.dev >/dev/null 2>&1
}
until_true 60 "CRDs established" crds_established
for ns in sps-system sps-config apps; do k create namespace "$ns" >/dev/null; done
k apply -f "$ROOT/operator/tests/rbac.yaml" >/dev/null
python3 - "$NODES" "$SLICES" "$PREFIX" "$WORK/nodes" <<'PY'
import json, os, sys
n, groups, prefix, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
os.makedirs(out)
res = {"cpu": "32", "memory": "256Gi", "pods": "110"}
chunks = [[] for _ in range(4)]
for i in range(n):
    name = f"{prefix}{i:05d}"
    chunks[i % 4].append({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name,
                     "labels": {"kubernetes.io/hostname": name, "type": "kwok",
                                "sps-scale/sim": "true", "sps-scale/group": f"g{i % groups}"},
                     "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"}},
        "status": {"allocatable": res, "capacity": res}})
for i, c in enumerate(chunks):
    with open(f"{out}/{i}.json", "w") as f:
        json.dump({"apiVersion": "v1", "kind": "List", "items": c}, f)
PY
t=$(now)
node_pids=()
for f in "$WORK"/nodes/*.json; do
  k create -f "$f" >/dev/null &
  node_pids+=($!)
done
for pid in "${node_pids[@]}"; do wait "$pid"; done
log "created $NODES Nodes in $(python3 -c "print(round($(now) - $t, 1))")s"
# kwok's pods get Ready READY_DELAY after they are bound, as the simulated agents' mirror pods do:
# the DaemonSet baseline runs with the same per-node delay, its apply and its rollout alike.
python3 - "$CACHE/tools/kwok-stages.yaml" "$WORK/kwok-stages.yaml" "$(delay_ms "$READY_DELAY")" <<'PY'
import sys
src, dst, ms = sys.argv[1], sys.argv[2], int(sys.argv[3])
out, stage, added = [], None, False
for line in open(src):
    if line.startswith("  name: "):
        stage = line.split(":", 1)[1].strip()
    if stage == "pod-ready" and line == "  next:\n" and ms > 0:
        out.append(f"  delay:\n    durationMilliseconds: {ms}\n")
        added = True
    out.append(line)
if ms > 0 and not added:
    sys.exit("no pod-ready stage to delay in " + src)
open(dst, "w").write("".join(out))
PY
"$KWOK" --kubeconfig "$WORK/kwok.kubeconfig" --config "$WORK/kwok-stages.yaml" --manage-all-nodes=false \
  --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
  --server-address "127.0.0.1:$KWOK_PORT" --node-lease-duration-seconds 600 >kwok.log 2>&1 &
PIDS+=($!)
# Node heartbeats are slowed down (kwok's Leases last 600 s, renewed every 150 s; the node lifecycle
# controller waits an hour): on two cores kwok and the API server could not keep a thousand nodes'
# 10 s renewals and nodes flapped NotReady, which withdrew entries mid-measurement. A real cluster
# has that load (N/10 Lease writes/s) on top of what is measured here.
# QPS as Kubernetes' own 5,000-node scalability jobs give the controller-manager (the default, 20,
# would make the DaemonSet baseline a test of client throttling).
"$KCM" --kubeconfig "$WORK/kcm.kubeconfig" --controllers=daemonset,nodelifecycle,garbagecollector \
  --leader-elect=false --bind-address 127.0.0.1 --secure-port "$KCM_PORT" \
  --kube-api-qps 100 --kube-api-burst 100 --node-monitor-grace-period 1h >kcm.log 2>&1 &
PIDS+=($!)
# The DaemonSet controller creates its pods with a node affinity and leaves binding them to the
# scheduler (since Kubernetes 1.12), so the baseline needs kube-scheduler too; same client QPS.
cat >scheduler.yaml <<EOF
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection: {kubeconfig: $WORK/scheduler.kubeconfig, qps: 100, burst: 100}
leaderElection: {leaderElect: false}
EOF
"$SCHEDULER" --config scheduler.yaml --bind-address 127.0.0.1 --secure-port "$SCHED_PORT" >scheduler.log 2>&1 &
PIDS+=($!)
count_ready_nodes() {
  k get nodes -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{" "}{.spec.taints}{"\n"}{end}' |
    awk '$1 == "True" && NF == 1' | wc -l
}
all_nodes_ready() { [[ $(count_ready_nodes) -ge $NODES ]]; }
until_true 600 "kwok keeps all $NODES Nodes Ready and untainted" all_nodes_ready
ok "$NODES Nodes Ready, not-ready taints lifted (kwok + nodelifecycle)"

# --- the operator, sampled; the agent fleet -----------------------------------------------------
start_operator() {
  # shellcheck disable=SC2086 # OPERATOR_ENV is a list of NAME=value words
  env ${OPERATOR_ENV:-} KUBECONFIG="$WORK/operator.kubeconfig" POD_NAME=scale-op RUST_LOG=info \
    "$BIN/staticpodset-operator" --lease-namespace sps-system --config-namespace sps-config \
    --http-addr "127.0.0.1:$OP_PORT" >>operator.log 2>&1 &
  OPERATOR_PID=$!
  echo "$OPERATOR_PID" >operator.pid
}
# Ready as a leader: /readyz alone is true for a standby too (see operator/src/http.rs).
# The metrics are read whole first: `curl | grep -q` fails under pipefail once they outgrow a pipe's
# buffer (200 sets' series do), as grep quits at its match and curl then writes into a closed pipe.
operator_ready() {
  local metrics
  curl -sf --max-time 10 "http://127.0.0.1:$OP_PORT/readyz" >/dev/null &&
    metrics=$(curl -sf --max-time 10 "http://127.0.0.1:$OP_PORT/metrics") &&
    grep -q '^staticpodset_operator_leader 1' <<<"$metrics"
}
# Samples the operator (whichever process operator.pid names) once a second: epoch pid rss_kb ticks.
(
  while sleep 1; do
    pid=$(cat operator.pid 2>/dev/null) || continue
    [[ -r /proc/$pid/stat ]] || continue
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null) || continue
    ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null) || continue
    echo "$(date +%s.%N) $pid ${rss:-0} ${ticks:-0}"
  done
) >samples.txt &
PIDS+=($!)
start_operator
PIDS+=("$OPERATOR_PID")
until_true 120 "operator ready" operator_ready
ok "operator ready ($PROFILE build)"
KUBECONFIG=$WORK/sim.kubeconfig RUST_LOG=info "$BIN/staticpodset-fleet-sim" --node-prefix "$PREFIX" \
  --ready-delay "$READY_DELAY" --failure-fraction "$FAILURE_FRACTION" >sim.log 2>&1 &
PIDS+=($!)
nsp_count() { [[ $(k get nsp -o name | grep -c "/$PREFIX") -ge $NODES ]]; }
until_true 300 "a NodeStaticPods per node" nsp_count
ok "a NodeStaticPods object per node"

# --- phases ---------------------------------------------------------------------------------------
mkdir -p results
PHASE_FILES=() PPROF_TOPS=()
# phase_begin NAME / phase_end NAME [key=json ...]: a window with /metrics on both sides.
PPROF_PHASES=${PPROF_PHASES:-} PPROF_SECONDS=${PPROF_SECONDS:-30} PPROF_PID=
phase_begin() {
  PHASE=$1
  metrics "results/$1.before"
  PHASE_T0=$(now)
  log "phase $1"
  if [[ " $PPROF_PHASES " == *" $1 "* ]]; then
    # The API server's own profiler (--profiling, on by default); the binary is stripped, but
    # Go's profiles carry function names.
    k get --raw "/debug/pprof/profile?seconds=$PPROF_SECONDS" >"results/$1.pprof" &
    PPROF_PID=$!
  fi
}
phase_end() {
  local t1; t1=$(now)
  if [[ -n $PPROF_PID ]]; then
    wait "$PPROF_PID" || log "no API server profile for $PHASE"
    PPROF_PID=
    "$(command -v go || echo /usr/local/go/bin/go)" tool pprof -top -nodecount=40 "results/$PHASE.pprof" >"results/$PHASE.pprof.txt" 2>&1 || true
    PPROF_TOPS+=("results/$PHASE.pprof.txt")
  fi
  sleep 2 # the audit log is written in batches
  metrics "results/$PHASE.after"
  python3 "$HERE/analyze.py" phase "$PHASE" "$PHASE_T0" "$t1" "results/$PHASE.before" \
    "results/$PHASE.after" audit.log samples.txt "$@" >"results/$PHASE.json"
  PHASE_FILES+=("results/$PHASE.json")
}
nsp_list() { k get --raw /apis/staticpods.dev/v1alpha1/nodestaticpods >"$1"; }
sps() { k -n apps get sps "$1" -o jsonpath="$2"; }
elapsed() { python3 -c "print(round($(now) - $1, 2))"; }

set_yaml() { # name selector-json image
  cat <<EOF
apiVersion: staticpods.dev/v1alpha1
kind: StaticPodSet
metadata: {name: $1, namespace: apps}
spec:
  nodeSelector: {matchLabels: $2}
  updateStrategy: {rollingUpdate: {maxUnavailable: "10%"}}
  template:
    metadata: {labels: {app: $1}}
    spec:
      containers: [{name: c, image: "$3"}]
EOF
}
IMAGE=registry.k8s.io/pause:3.10 IMAGE2=registry.k8s.io/pause:3.9

phase_begin idle
sleep 10
phase_end

# Background sets: all on every node (SLICES=1) or each on one group of nodes.
phase_begin background
bg_names=()
for ((i = 1; i < SETS; i++)); do
  name=$(printf 'bg-%03d' "$i")
  bg_names+=("$name")
  if ((SLICES > 1)); then
    sel="{sps-scale/group: g$((i % SLICES))}"
  else
    sel='{sps-scale/sim: "true"}'
  fi
  set_yaml "$name" "$sel" "$IMAGE"
  echo ---
done >background.yaml
if ((${#bg_names[@]})); then k apply -f background.yaml >/dev/null; fi
bg_ready() {
  local name d r
  for name in "${bg_names[@]}"; do
    d=$(sps "$name" '{.status.desiredNumberScheduled}') r=$(sps "$name" '{.status.numberReady}')
    [[ -n $d && $d -gt 0 && $r == "$d" ]] || return 1
  done
}
until_true 3600 "background sets Ready" bg_ready
phase_end
ok "$((SETS - 1)) background sets applied and Ready"

# apply: one set over every node.
phase_begin apply
t0=$PHASE_T0
set_yaml bench '{sps-scale/sim: "true"}' "$IMAGE" | k apply -f - >/dev/null
# Waited for on the set's status only: listing every node object to watch the entries arrive
# loaded the API server it measures (at 5,000 nodes each list was ~80 MB and timed out). When
# each entry arrived comes from the node objects afterwards: the agent's mirror pod Ready time,
# READY_DELAY after it saw the entry (whole seconds).
bench_ready() {
  [[ $(sps bench '{.status.numberReady}') == "$NODES" && $(sps bench '{.status.updatedNumberScheduled}') == "$NODES" ]]
}
until_true 3600 "bench set all Ready" bench_ready
t_ready=$(elapsed "$t0")
nsp_list nsp.json
times=$(python3 "$HERE/analyze.py" nsp-times nsp.json bench "$t0" "$(python3 -c "print($(delay_ms "$READY_DELAY") / 1000)")")
t_written=$(jq -r .written.max <<<"$times")
[[ $t_written != null ]] || die "no entry of the bench set was seen on any node"
phase_end "all_written_s=$t_written" "all_ready_s=$t_ready" \
  "entries_written=$(jq -c .written <<<"$times")" "to_ready=$(jq -c .ready <<<"$times")"
ok "bench set: every entry written after ${t_written}s, all Ready after ${t_ready}s"
read -r checked bad < <(python3 "$HERE/analyze.py" entries nsp.json "$PREFIX" "$SLICES" "$((SETS - 1))")
[[ $checked == "$NODES" && $bad == 0 ]] || fail "every node carries exactly its sets ($bad of $checked wrong)"
ok "every node carries exactly the sets that select it ($checked nodes)"

# The same pod as a DaemonSet on the same nodes.
phase_begin daemonset
t0=$PHASE_T0
k apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: bench-ds, namespace: apps}
spec:
  selector: {matchLabels: {app: bench-ds}}
  updateStrategy: {type: RollingUpdate, rollingUpdate: {maxUnavailable: "10%"}}
  template:
    metadata: {labels: {app: bench-ds}}
    spec:
      nodeSelector: {sps-scale/sim: "true"}
      tolerations: [{key: kwok.x-k8s.io/node, operator: Exists}]
      containers: [{name: c, image: "$IMAGE"}]
EOF
ds() { k -n apps get ds bench-ds -o jsonpath="$1"; }
ds_ready() {
  [[ $(ds '{.status.numberReady}') == "$NODES" && $(ds '{.status.updatedNumberScheduled}') == "$NODES" &&
    $(ds '{.status.observedGeneration}') == $(ds '{.metadata.generation}') ]]
}
until_true 3600 "DaemonSet pods all Running and Ready" ds_ready
t_ds=$(elapsed "$t0")
k get --raw "/api/v1/namespaces/apps/pods?labelSelector=app%3Dbench-ds" >pods.json
ptimes=$(python3 "$HERE/analyze.py" pod-times pods.json "$t0")
phase_end "all_ready_s=$t_ds" "pods_ready=$(jq -c .ready <<<"$ptimes")"
ok "DaemonSet: all $NODES pods Ready after ${t_ds}s"

# Rollout: a template change, maxUnavailable 10%, the set then the DaemonSet.
phase_begin rollout
t0=$PHASE_T0
rev_before=$(sps bench '{.status.updateRevision}')
k -n apps patch sps bench --type=json \
  -p "[{\"op\":\"replace\",\"path\":\"/spec/template/spec/containers/0/image\",\"value\":\"$IMAGE2\"}]" >/dev/null
# Complete means at the new revision: the status of the old one is complete too.
rolled() {
  local cur upd
  cur=$(sps bench '{.status.currentRevision}') upd=$(sps bench '{.status.updateRevision}')
  [[ -n $upd && $upd != "$rev_before" && $cur == "$upd" &&
     $(sps bench '{.status.observedGeneration}') == $(sps bench '{.metadata.generation}') ]] && bench_ready
}
until_true 3600 "bench set rolled out" rolled
t_roll=$(elapsed "$t0")
phase_end "rollout_done=$t_roll"
ok "bench set rollout (maxUnavailable 10%) complete after ${t_roll}s"
phase_begin ds-rollout
t0=$PHASE_T0
k -n apps set image ds/bench-ds "c=$IMAGE2" >/dev/null
until_true 3600 "DaemonSet rolled out" ds_ready
t_dsroll=$(elapsed "$t0")
phase_end "rollout_done=$t_dsroll"
ok "DaemonSet rollout complete after ${t_dsroll}s (kwok pods Ready $READY_DELAY after binding)"

# Operator restart: ready again, then quiet (no write but its Lease for 10 s).
phase_begin restart
stop_operator
t0=$(now) PHASE_T0=$t0
start_operator
PIDS+=("$OPERATOR_PID")
until_true 300 "operator ready after restart" operator_ready
t_opready=$(elapsed "$t0")
op_writes() { awk '/"username":"sps-operator"/ && /"verb":"(create|update|patch|delete)"/ && !/"resource":"leases"/' audit.log | wc -l; }
last=$(op_writes) quiet_since=$SECONDS
quiet_end=$((SECONDS + 600))
while ((SECONDS < quiet_end)); do
  sleep 2
  n=$(op_writes)
  if [[ $n == "$last" ]]; then
    ((SECONDS - quiet_since >= 10)) && break
  else
    last=$n quiet_since=$SECONDS
  fi
done
phase_end "ready_s=$t_opready"
ok "operator restarted: ready after ${t_opready}s"
rolled || fail "after the restart the bench set is still rolled out and Ready"

# Steady state: nothing changes.
phase_begin steady
sleep "$STEADY"
phase_end
ok "steady state measured over ${STEADY}s"

# Sizes.
mkdir sizes
k get nsp -o json --show-managed-fields >sizes/nodestaticpods.json
k get sps -A -o json --show-managed-fields >sizes/staticpodsets.json
k get spr -A -o json --show-managed-fields >sizes/staticpodrevisions.json
k get nodes -o json --show-managed-fields >sizes/nodes.json
k get pods -A -o json --show-managed-fields >sizes/pods.json
sizes=$(python3 "$HERE/analyze.py" sizes sizes)
db=$("$ETCDCTL" --endpoints "127.0.0.1:$ETCD_PORT" endpoint status -w json | jq '.[0].Status.dbSize')
rm -rf sizes
entries=$(python3 -c "import json; print(sum(len(o['spec'].get('pods', [])) for o in json.load(open('nsp.json'))['items']))")
cat >results/meta.json <<EOF
{"meta": {"shape": "$SHAPE", "nodes": $NODES, "sets": $SETS, "groups": $SLICES, "entries": $entries,
  "profile": "$PROFILE", "write_mode": "node-writer", "ready_delay": "$READY_DELAY", "steady_seconds": $STEADY, "failure_fraction": $FAILURE_FRACTION, "operator_env": "${OPERATOR_ENV:-}",
  "machine": "$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)",
  "date": "$(date -u +%FT%TZ)", "commit": "$(git -C "$ROOT" rev-parse --short HEAD)"},
 "sizes": $sizes, "etcd_db_bytes": $db}
EOF

mkdir -p "$OUT"
stamp=$SHAPE-$(date -u +%Y%m%dT%H%M%SZ)
# The results so far are kept before the deletion, which at thousands of nodes takes minutes.
python3 "$HERE/analyze.py" merge "$OUT/$stamp.json" results/meta.json "${PHASE_FILES[@]}"

# Deletion: nothing left.
phase_begin delete
t0=$PHASE_T0
k -n apps delete sps --all --wait=false >/dev/null
k -n apps delete ds bench-ds --wait=false >/dev/null
no_sets() { [[ -z $(k -n apps get sps -o name) ]]; }
until_true 3600 "every set released" no_sets
empty_nodes() {
  nsp_list nsp.json
  python3 -c "
import json, sys
items = json.load(open('nsp.json'))['items']
left = [o['metadata']['name'] for o in items if o['spec'].get('pods') or (o.get('status') or {}).get('pods')]
sys.exit(1 if left else 0)"
}
until_true 3600 "no entry and no report left on any node" empty_nodes
t_deleted=$(elapsed "$t0")
ok "sets deleted: no entry, no report left after ${t_deleted}s"
no_ds_pods() { [[ -z $(k -n apps get pods -o name) ]]; }
until_true 3600 "DaemonSet pods gone" no_ds_pods
no_revisions() { [[ -z $(k -n apps get spr -o name) ]]; }
until_true 120 "no StaticPodRevision left" no_revisions
phase_end "all_released_s=$t_deleted"
ok "DaemonSet and revisions gone"

python3 "$HERE/analyze.py" merge "$OUT/$stamp.json" results/meta.json "${PHASE_FILES[@]}"
if [[ $CHECK == 1 ]]; then
  log "CHECK=1: correctness only; results in $OUT/$stamp.json"
else
  python3 "$HERE/analyze.py" table "$OUT/$stamp.json" | tee "$OUT/$stamp.txt"
fi
for top in "${PPROF_TOPS[@]}"; do
  phase=$(basename "$top" .pprof.txt)
  { echo; echo "API server CPU profile, first ${PPROF_SECONDS}s of phase $phase:"; head -n 50 "$top"; } >>"$OUT/$stamp.profile.txt"
done
