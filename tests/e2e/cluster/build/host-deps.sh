#!/usr/bin/env bash
# Installs the host packages the cluster needs from Debian, when they are missing:
#   containernetworking-plugins  bridge/host-local/loopback/portmap CNI plugins (installs to /usr/lib/cni)
#   busybox-static               a static busybox, the root filesystem of our test workload image
#   iptables, conntrack          used by the bridge plugin's masquerading and by kubelet probes
#   openssl                      certificates
#   gcc, libc6-dev               the pause binary (a few lines of C, linked statically) and runc's cgo
#   libseccomp-dev, pkg-config   runc's seccomp support
#   protobuf-compiler            protoc, which the node agent's CRI bindings (crate k8s-cri) need to build
#   prometheus                   a real Prometheus that scrapes our components in the metrics e2e test
#                                (Debian's package does not start a service here: no init system),
#                                and promtool, which checks and unit-tests the chart's alert rules
#   python3-yaml                 PyYAML, with which tests/chart/check.sh reads rendered manifests
#   jq                           JSON in the e2e suites (22, 60, 80)
#   debootstrap                  the root filesystem of the kind node image (tests/kind/rootfs.sh)
#                                (tests/kind/dockerd.sh installs docker.io itself, when it starts it)
# and the package shellcheck, the lint of every shell script (tests/shellcheck.sh: make lint, make test).
# shellcheck source=../lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"

PACKAGES=(containernetworking-plugins libseccomp-dev pkg-config busybox-static iptables conntrack openssl gcc libc6-dev curl prometheus python3-yaml jq protobuf-compiler shellcheck debootstrap)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
