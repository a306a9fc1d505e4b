#!/usr/bin/env bash
# Our own Docker engine for kind, kept apart from everything else on the machine.
#
#   tests/kind/dockerd.sh start   install Debian's docker.io if missing, start dockerd (idempotent)
#   tests/kind/dockerd.sh stop    stop it (and the containerd it started)
#   tests/kind/dockerd.sh env     print `export DOCKER_HOST=... DOCKER_API_VERSION=...`
#
# dockerd keeps everything it owns under its own paths: data-root $STATICPODSET_CACHE/kind/docker,
# exec-root /run/sps-kind-docker (its socket, pidfile and containerd live there too). It leaves the
# host's network setup alone: no iptables/ip6tables rules, no masquerading, no default bridge, no
# ip_forward change. Its containerd is Debian's (found first on the PATH we give dockerd), never
# the host harness's own containerd from the cache.
#
# The default runtime is files/runc-wrapper in front of our runc ($TOOLS_BIN/runc): it removes
# CAP_SYS_RESOURCE, which no process here has in its bounding set, from every container and exec,
# so `docker run --privileged` (every kind node) starts.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RUNTIME_DIR=$KIND_CACHE/runtime

install_docker() {
  command -v dockerd >/dev/null && [[ -x /usr/bin/containerd && -x /usr/sbin/docker-proxy ]] && return
  log "installing Debian's docker.io"
  apt-get install -y --no-install-recommends docker.io >/dev/null
}

install_runtime() {
  mkdir -p "$RUNTIME_DIR"
  if ! cmp -s "$KIND_DIR/files/runc-wrapper" "$RUNTIME_DIR/runc"; then
    install -m 0755 "$KIND_DIR/files/runc-wrapper" "$RUNTIME_DIR/runc"
  fi
  if ! cmp -s "$TOOLS_BIN/runc" "$RUNTIME_DIR/runc.real"; then
    install -m 0755 "$TOOLS_BIN/runc" "$RUNTIME_DIR/runc.real"
  fi
}

dockerd_running() {
  [[ -f $DOCKER_PIDFILE ]] && kill -0 "$(cat "$DOCKER_PIDFILE")" 2>/dev/null
}

docker_ready() { docker version >/dev/null 2>&1; }

start() {
  [[ -x $TOOLS_BIN/runc ]] || die "$TOOLS_BIN/runc is missing: tests/e2e/cluster/build/components.sh builds it"
  install_docker
  install_runtime
  if dockerd_running && docker_ready; then log "dockerd already running ($DOCKER_HOST)"; return; fi
  mkdir -p "$DOCKER_ROOT" "$DOCKER_EXEC_ROOT"
  log "starting dockerd (log: $DOCKER_LOG)"
  (
    for fd in "/proc/$BASHPID/fd/"*; do
      fd=${fd##*/}
      ((fd > 2)) && eval "exec $fd>&-"
    done
    # Debian's containerd and shim first: not the harness's containerd 2.x in $TOOLS_BIN.
    export PATH=/usr/sbin:/usr/bin:/sbin:/bin
    unset DOCKER_HOST DOCKER_API_VERSION
    exec setsid dockerd \
      --data-root "$DOCKER_ROOT" \
      --exec-root "$DOCKER_EXEC_ROOT" \
      --pidfile "$DOCKER_PIDFILE" \
      -H "unix://$DOCKER_SOCK" \
      --iptables=false --ip6tables=false --ip-masq=false --ip-forward=false --bridge=none \
      --oom-score-adjust=0 \
      --add-runtime "sps-runc=$RUNTIME_DIR/runc" --default-runtime sps-runc \
      --storage-driver overlay2 \
      >>"$DOCKER_LOG" 2>&1 </dev/null
  ) &
  local end=$((SECONDS + 60))
  until docker_ready; do
    if ((SECONDS >= end)); then tail -n 20 "$DOCKER_LOG" >&2; die "dockerd did not answer within 60s"; fi
    sleep 0.5
  done
  log "dockerd ready: $(docker version --format '{{.Server.Version}}') at $DOCKER_HOST"
}

stop() {
  if ! dockerd_running; then log "dockerd not running"; return; fi
  local pid; pid=$(cat "$DOCKER_PIDFILE")
  log "stopping dockerd (pid $pid)"
  kill -TERM "$pid"
  local end=$((SECONDS + 60))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= end)); then log "dockerd did not stop in 60s; killing it"; kill -KILL "$pid"; break; fi
    sleep 0.5
  done
  # dockerd stops the containerd it started; make sure of it (only that one: its pidfile).
  local cpid=$DOCKER_EXEC_ROOT/containerd/containerd.pid
  if [[ -f $cpid ]] && kill -0 "$(cat "$cpid")" 2>/dev/null; then kill -TERM "$(cat "$cpid")"; fi
  log "dockerd stopped"
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  env) printf 'export DOCKER_HOST=%q DOCKER_API_VERSION=%q\n' "$DOCKER_HOST" "$DOCKER_API_VERSION" ;;
  *) die "usage: $0 start|stop|env" ;;
esac
