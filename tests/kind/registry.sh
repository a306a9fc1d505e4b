#!/usr/bin/env bash
# kind's local-registry pattern with our own registry build ($TOOLS_BIN/registry, the CNCF
# distribution registry the host harness uses), for suites that need a real pull (pre-pull):
#   tests/kind/registry.sh start   image (docker import, cached), container kind-registry on kind's
#                                  network published at 127.0.0.1:$KIND_REGISTRY_PORT, every node's
#                                  containerd told to resolve $KIND_REGISTRY there (hosts.toml),
#                                  ConfigMap kube-public/local-registry-hosting (KEP-1755)
#   tests/kind/registry.sh stop    remove the container (its storage goes with it)
# Push with: REGISTRY=$KIND_REGISTRY tests/e2e/cluster/push-image ARCHIVE $KIND_REGISTRY/NAME:TAG
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

registry_image() {
  docker image inspect "$KIND_REGISTRY_IMAGE" >/dev/null 2>&1 && return
  local root; root=$(mktemp -d "$KIND_CACHE/registry.XXXXXX")
  mkdir -p "$root/usr/local/bin" "$root/etc/distribution" "$root/var/lib/registry" "$root/tmp"
  chmod 1777 "$root/tmp"
  cp "$TOOLS_BIN/registry" "$root/usr/local/bin/registry"
  cat >"$root/etc/distribution/config.yml" <<'CFG'
version: 0.1
log:
  level: warn
  accesslog: {disabled: true}
storage:
  filesystem: {rootdirectory: /var/lib/registry}
  delete: {enabled: true}
http:
  addr: :5000
CFG
  tar --numeric-owner -C "$root" -c . | docker import \
    --change 'ENTRYPOINT ["/usr/local/bin/registry", "serve", "/etc/distribution/config.yml"]' \
    --change 'ENV OTEL_TRACES_EXPORTER=none' - "$KIND_REGISTRY_IMAGE" >/dev/null
  rm -rf "$root"
  log "built $KIND_REGISTRY_IMAGE"
}

start() {
  docker network inspect kind >/dev/null 2>&1 || die "no kind network: run tests/kind/up.sh first"
  registry_image
  if [[ $(docker inspect -f '{{.State.Running}}' "$KIND_REGISTRY_NAME" 2>/dev/null) != true ]]; then
    docker rm -f "$KIND_REGISTRY_NAME" >/dev/null 2>&1 || true
    docker run -d --restart=always --name "$KIND_REGISTRY_NAME" --network kind \
      -p "127.0.0.1:$KIND_REGISTRY_PORT:5000" "$KIND_REGISTRY_IMAGE" >/dev/null
  fi
  wait_for "the registry at $KIND_REGISTRY" 30 curl -sf "http://127.0.0.1:$KIND_REGISTRY_PORT/v2/" ||
    { docker logs "$KIND_REGISTRY_NAME" >&2; die "registry not answering"; }
  local n
  for n in $(kind get nodes --name "$CLUSTER_NAME"); do
    docker exec -i "$n" sh -c "mkdir -p /etc/containerd/certs.d/$KIND_REGISTRY && cat >/etc/containerd/certs.d/$KIND_REGISTRY/hosts.toml" <<TOML
[host."http://$KIND_REGISTRY_NAME:5000"]
  capabilities = ["pull", "resolve"]
TOML
  done
  KUBECONFIG=$KUBECONFIG_KIND kubectl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: ConfigMap
metadata:
  name: local-registry-hosting
  namespace: kube-public
data:
  localRegistryHosting.v1: |
    host: "$KIND_REGISTRY"
    help: "https://kind.sigs.k8s.io/docs/user/local-registry/"
YAML
  log "registry $KIND_REGISTRY ready (nodes resolve it to http://$KIND_REGISTRY_NAME:5000)"
}

stop() {
  if docker rm -f "$KIND_REGISTRY_NAME" >/dev/null 2>&1; then log "removed $KIND_REGISTRY_NAME"; fi
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  *) die "usage: $0 start|stop" ;;
esac
