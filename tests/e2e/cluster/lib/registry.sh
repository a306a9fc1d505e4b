# shellcheck shell=bash
# A local image registry, so the cluster can pull real images although the machine reaches no
# registry: the CNCF distribution registry (build/components.sh), plain HTTP on loopback, its storage
# under RUN_DIR (so `down` removes it). Every node's containerd resolves `$REGISTRY/...` images there
# (hosts.toml, written by lib/node.sh). Push an OCI archive with `push-image`.

write_registry_config() {
  mkdir -p "$RUN_DIR/registry/data"
  cat >"$RUN_DIR/registry/config.yml" <<CFG
version: 0.1
log:
  level: warn
  accesslog: {disabled: true}
storage:
  filesystem: {rootdirectory: $RUN_DIR/registry/data}
  delete: {enabled: true}
http:
  addr: $REGISTRY
CFG
}

start_registry() {
  daemon_running registry && return
  write_registry_config
  # No OpenTelemetry exporter: nothing listens for one here.
  OTEL_TRACES_EXPORTER=none start_daemon registry registry serve "$RUN_DIR/registry/config.yml"
  wait_daemon registry 30 curl -sf "http://$REGISTRY/v2/"
}

# The hosts.toml a node's containerd reads for $REGISTRY: plain HTTP, pull and resolve.
write_registry_hosts() {
  local dir=$1/$REGISTRY
  mkdir -p "$dir"
  cat >"$dir/hosts.toml" <<TOML
server = "http://$REGISTRY"

[host."http://$REGISTRY"]
  capabilities = ["pull", "resolve"]
TOML
}
