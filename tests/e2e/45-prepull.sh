#!/usr/bin/env bash
# End to end: the agent pre-pulls a new revision's images through the node's CRI socket before it
# swaps the manifest, on the real cluster with the chart's default pre-pull settings.
#   1. a set moves to an image only the local registry has: on every node, at the moment the new
#      manifest appears in the kubelet's directory, the runtime already has the image (a watcher
#      polls the directory every 20 ms and asks crictl at once); the agent counted the pull
#   2. an image that cannot be pulled: the write is held (report Pending, naming the image, the old
#      pod still serving), while another set's update goes through at once; after the pre-pull
#      timeout the manifest is written anyway, with the failure in the report and the metrics.
# Without pre-pull (agent.criSocket="") part 1 fails: the kubelet pulls only after the write.
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

A=${NODES[0]} B=${NODES[1]}
PREPULL_TIMEOUT=${PREPULL_TIMEOUT:-20s}

watchers=()
cleanup() {
  kubectl delete sps --all -n "$E2E_NS" --wait=true --timeout=120s >/dev/null 2>&1 || true
  if ((${#watchers[@]})); then kill "${watchers[@]}" 2>/dev/null || true; fi
  # Back to the suite-wide chart values.
  install_product >/dev/null 2>&1 || true
}
trap cleanup EXIT

install_product
# A short pre-pull timeout, so part 2 does not wait the default two minutes.
helm upgrade "$RELEASE" "$REPO_ROOT/charts/staticpodset" -n "$RELEASE_NS" --reuse-values \
  --set agent.prepullTimeout="$PREPULL_TIMEOUT" --wait --timeout 3m >/dev/null || fail "helm upgrade"
kubectl rollout status ds -n "$RELEASE_NS" "$RELEASE-staticpodset-agent" --timeout 120s >/dev/null ||
  fail "agent DaemonSet did not roll out"
[[ $(kubectl get ds -n "$RELEASE_NS" "$RELEASE-staticpodset-agent" -o jsonpath='{.spec.template.spec.containers[0].args}') == *--cri-socket=* ]] ||
  fail "the agent was installed without --cri-socket"
ensure_e2e_namespace

agent_pod() { kubectl get pods -n "$RELEASE_NS" -l app.kubernetes.io/component=node-agent --field-selector "spec.nodeName=$1" -o jsonpath='{.items[0].metadata.name}'; }
node_metric() { # node series: the value of the series at the node's agent, 0 when absent
  agent_metric "$(agent_ip "$1")" "$2"
}
revision_of() { # node set: the revision in the node's manifest file, empty if none (the agent
  # removes the old file before it writes the new one: see node-agent/src/stop_first.rs)
  manifest_revision "$1" "staticpodset_${E2E_NS}_$2.yaml"
}

# --- 1. the image is on the node before the manifest changes -----------------------------------
WEB_IMAGE=$BUSYBOX_IMAGE web_set_yaml pp '{}' v1 | kubectl apply -f - >/dev/null
wait_for "pp Ready on both nodes" 180 all_mirrors_ready "$E2E_NS" pp || fail "pp not Ready on image A"
rev1=$(sps_status pp updateRevision)
image=$(registry_image "pp-$(date +%s)-$RANDOM")
for n in "$A" "$B"; do
  ! crictl_on "$n" inspecti "$image" >/dev/null 2>&1 || fail "$image is on $n before the test"
done
pulled_before=$(node_metric "$A" 'staticpodset_agent_image_pulls_total{result="pulled"}')

# watch NODE: once the node's manifest leaves revision rev1, ask the runtime whether it has the image.
watch_node() {
  local n=$1 out=$2 end=$((SECONDS + 300)) rev
  while ((SECONDS < end)); do
    rev=$(revision_of "$n" pp)
    if [[ -n $rev && $rev != "$rev1" ]]; then
      if crictl_on "$n" inspecti "$image" >/dev/null 2>&1; then echo present >"$out"; else echo absent >"$out"; fi
      return
    fi
    sleep 0.02
  done
  echo "no new manifest" >"$out"
}
out_dir=$(mktemp -d)
for n in "$A" "$B"; do watch_node "$n" "$out_dir/$n" & watchers+=("$!"); done
WEB_IMAGE=$image WEB_PULL_POLICY=IfNotPresent web_set_yaml pp '{}' v2 | kubectl apply -f - >/dev/null
wait "${watchers[@]}"
watchers=()
for n in "$A" "$B"; do
  seen=$(cat "$out_dir/$n")
  [[ $seen == present ]] || fail "on $n the new manifest appeared while the image was $seen: not pre-pulled"
done
rm -rf "$out_dir"
rev2=$(sps_status pp updateRevision)
on_rev2() {
  local n
  for n in "$A" "$B"; do
    [[ $(kubectl get pod -n "$E2E_NS" "pp-$n" -o jsonpath='{.metadata.annotations.staticpods\.dev/revision}' 2>/dev/null) == "$rev2" ]] || return 1
    mirror_ready "$E2E_NS" "pp-$n" || return 1
  done
}
wait_for "pp Ready at $rev2 on both nodes" 180 on_rev2 || fail "pp not Ready on $image at $rev2"
for n in "$A" "$B"; do
  [[ $(kubectl get pod -n "$E2E_NS" "pp-$n" -o jsonpath='{.spec.containers[0].image}') == "$image" ]] ||
    fail "pp-$n does not run $image"
done
pulled_after=$(node_metric "$A" 'staticpodset_agent_image_pulls_total{result="pulled"}')
((pulled_after > pulled_before)) || fail "the agent on $A counted no pull ($pulled_before -> $pulled_after)"
grep -q "images on the node; writing the manifest" <<<"$(kubectl logs -n "$RELEASE_NS" "$(agent_pod "$A")")" ||
  fail "the agent on $A did not log the released write"
ok "registry-only image present on both nodes before their manifests changed; pulls counted on $A"

# --- 2. an image that cannot be pulled: held, other sets go on, written after the timeout ------
WEB_IMAGE=$BUSYBOX_IMAGE web_set_yaml other '{}' o1 | kubectl apply -f - >/dev/null
wait_for "other Ready" 180 all_mirrors_ready "$E2E_NS" other || fail "set other not Ready"
missing=$REGISTRY/sps-e2e/does-not-exist:$RANDOM
rev_pp=$(sps_status pp updateRevision)
WEB_IMAGE=$missing WEB_PULL_POLICY=IfNotPresent web_set_yaml pp '{}' v3 | kubectl apply -f - >/dev/null
t_held=$SECONDS
wait_for "a new revision of pp" 30 bash -c "[[ \$(kubectl get sps -n $E2E_NS pp -o jsonpath='{.status.updateRevision}') != $rev_pp ]]" ||
  fail "no new revision for pp"
rev3=$(sps_status pp updateRevision)
# The rollout hands the revision to one node (maxUnavailable 1); that node is the one to watch.
X=""
assigned_node() {
  local n
  for n in "$A" "$B"; do
    if [[ $(kubectl get nodestaticpods "$n" -o jsonpath='{.spec.pods[?(@.setName=="pp")].revision}') == "$rev3" ]]; then
      X=$n; return 0
    fi
  done
  return 1
}
wait_for "revision $rev3 handed to a node" 60 assigned_node || fail "no node was handed pp's revision $rev3"
assigned_node
errors_before=$(node_metric "$X" 'staticpodset_agent_image_pulls_total{result="error"}')
deadline_before=$(node_metric "$X" 'staticpodset_agent_prepull_waits_total{outcome="deadline_passed"}')
held() {
  grep -qF "pre-pulling $missing" <<<"$(kubectl get nodestaticpods "$X" -o jsonpath='{.status.pods[?(@.setName=="pp")].message}')"
}
wait_for "the write of pp held on $X" 60 held ||
  fail "no Pending report naming $missing: $(kubectl get nodestaticpods "$X" -o jsonpath='{.status.pods}')"
[[ $(revision_of "$X" pp) == "$rev_pp" ]] || fail "the manifest changed while its image could not be pulled"
mirror_ready "$E2E_NS" "pp-$X" || fail "the old pp pod stopped while the write was held"
# Another set's update is not held up by pp's pull.
WEB_IMAGE=$BUSYBOX_IMAGE web_set_yaml other '{}' o2 | kubectl apply -f - >/dev/null
other_rev=""
other_updated() {
  other_rev=$(sps_status other updateRevision)
  [[ $(revision_of "$X" other) == "$other_rev" ]]
}
wait_for "other's manifest updated on $X" 30 other_updated || fail "set other's write waited for pp's pull"
[[ $(revision_of "$X" pp) == "$rev_pp" ]] || fail "pp's manifest changed within the pre-pull timeout"
ok "unpullable image: pp's write held on $X (Pending, old pod serving), set other updated meanwhile"

written_anyway() { [[ -n $(revision_of "$X" pp) && $(revision_of "$X" pp) != "$rev_pp" ]]; }
wait_for "pp written after the pre-pull timeout" 120 written_anyway || fail "pp's manifest was never written"
waited=$((SECONDS - t_held))
noted() {
  grep -qF "pre-pull did not get $missing" <<<"$(kubectl get nodestaticpods "$X" -o jsonpath='{.status.pods[?(@.setName=="pp")].message}')"
}
wait_for "the report notes the failed pre-pull" 30 noted ||
  fail "no note of the failed pre-pull: $(kubectl get nodestaticpods "$X" -o jsonpath='{.status.pods}')"
(($(node_metric "$X" 'staticpodset_agent_image_pulls_total{result="error"}') > errors_before)) || fail "pull errors not counted"
(($(node_metric "$X" 'staticpodset_agent_prepull_waits_total{outcome="deadline_passed"}') > deadline_before)) ||
  fail "the released wait not counted"
grep -q "writing the manifest without its images" <<<"$(kubectl logs -n "$RELEASE_NS" "$(agent_pod "$X")")" ||
  fail "the agent did not log the write without images"
ok "after the ${PREPULL_TIMEOUT} pre-pull timeout (${waited}s after apply) pp written anyway; report, metrics and log say why"

echo "45-prepull: $passed passed, 0 failed"
