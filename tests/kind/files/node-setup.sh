#!/bin/bash
# Runs inside the node-image build container (tests/kind/node-image.sh), with the staging folder
# mounted read-only at /stage. Lays out the node the way kind's images/base Dockerfile does, then
# preloads the control-plane images into containerd's k8s.io namespace (content only, unpacked at
# first use, as kind's own node-image build does).
set -euo pipefail
s=/stage
kindfiles=$s/kind-base-files

# kind's node files (entrypoint, systemd units, /kind/bin helpers, crictl.yaml, sysctl.d, default/kubelet).
install -m 0755 "$kindfiles"/usr/local/bin/* /usr/local/bin/
mkdir -p /kind/bin /kind/manifests /etc/containerd /etc/default /etc/sysctl.d /etc/systemd/system/kubelet.service.d
install -m 0755 "$kindfiles"/kind/bin/* /kind/bin/
install -m 0644 "$kindfiles"/etc/crictl.yaml /etc/crictl.yaml
install -m 0644 "$kindfiles"/etc/default/* /etc/default/
install -m 0644 "$kindfiles"/etc/sysctl.d/* /etc/sysctl.d/
for f in "$kindfiles"/etc/systemd/system/*; do [[ -f $f ]] && install -m 0644 "$f" /etc/systemd/system/; done
install -m 0644 "$kindfiles"/etc/systemd/system/kubelet.service.d/* /etc/systemd/system/kubelet.service.d/
chmod 755 /kind /kind/bin

# Our binaries.
install -m 0755 "$s"/bin/containerd "$s"/bin/containerd-shim-runc-v2 "$s"/bin/ctr "$s"/bin/crictl /usr/local/bin/
mkdir -p /usr/local/sbin /opt/cni/bin
install -m 0755 "$s"/bin/runc /usr/local/sbin/runc.real
install -m 0755 "$s"/runc-wrapper /usr/local/sbin/runc
install -m 0755 "$s"/bin/kubelet "$s"/bin/kubeadm "$s"/bin/kubectl /usr/bin/
install -m 0755 "$s"/cni/* /opt/cni/bin/
install -m 0644 "$s"/containerd-config.toml /etc/containerd/config.toml
install -m 0644 "$s"/default-storage.yaml /kind/manifests/default-storage.yaml
install -m 0644 "$s"/version /kind/version

# What kind's Dockerfile does after installing packages.
find /lib/systemd/system/sysinit.target.wants/ -name systemd-tmpfiles-setup.service -delete
rm -f /lib/systemd/system/multi-user.target.wants/* /etc/systemd/system/*.wants/* \
  /lib/systemd/system/local-fs.target.wants/* /lib/systemd/system/sockets.target.wants/*udev* \
  /lib/systemd/system/sockets.target.wants/*initctl* /lib/systemd/system/basic.target.wants/*
grep -q '^ReadKMsg=no' /etc/systemd/journald.conf || echo "ReadKMsg=no" >>/etc/systemd/journald.conf
[[ -e /sbin/init ]] || ln -s /usr/lib/systemd/systemd /sbin/init
systemctl enable kubelet.service containerd.service undo-mount-hacks.service
systemctl mask systemd-binfmt.service
mkdir -p /etc/kubernetes/manifests
# bookworm's iptables alternatives default to nft; kind's entrypoint picks per host at boot.

# The base OCI spec containerd's CRI starts from, as kind's Dockerfile makes it.
ctr oci spec |
  jq '.hooks.createContainer[.hooks.createContainer | length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' |
  jq 'del(.process.rlimits)' >/etc/containerd/cri-base.json

# Preload the images (content only; no snapshotter needed here).
# ctr warns about cgroup v1 on every call; keep real errors visible.
quiet() { "$@" 2>&1 >/dev/null | { grep -v DEPRECATION >&2 || true; }; }
mkdir -p /run/containerd
containerd >/tmp/containerd.log 2>&1 &
cpid=$!
for _ in $(seq 1 60); do ctr version >/dev/null 2>&1 && break; sleep 0.5; done
ctr version >/dev/null || { cat /tmp/containerd.log; exit 1; }
for a in "$s"/images/*.tar; do
  quiet ctr -n k8s.io images import --label=io.cri-containerd.pinned=pinned --all-platforms --no-unpack "$a"
done
while read -r src dst; do
  [[ -n $src ]] && quiet ctr -n k8s.io images tag --force "$src" "$dst"
done <"$s"/image-tags
ctr -n k8s.io images ls -q 2>/dev/null
kill "$cpid"
wait "$cpid" || true
rm -rf /tmp/* /var/log/*.log
