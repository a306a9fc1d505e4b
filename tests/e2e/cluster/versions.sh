# shellcheck shell=bash
# The pinned versions of everything the test cluster builds: the one place a version is written.
# Sourced by tests/e2e/cluster/lib/common.sh (so by every harness script and e2e suite), by
# tests/run-all.sh and by operator/tests/apiserver.sh. Only assignments: safe to source anywhere.
# Each may be overridden from the environment. (The Rust side pins its API level separately: the
# k8s-openapi feature `v1_36` in Cargo.toml follows K8S_VERSION's minor.)

# Kubernetes 1.36 is the newest minor whose go.mod (`go 1.26.0`) builds with the Go on our machines.
K8S_VERSION=${K8S_VERSION:-v1.36.3}
# etcd 3.6: kube-apiserver >=1.31 needs RequestWatchProgress, which Debian's 3.4.23 lacks.
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
# containerd 2.3: the recommended line for Kubernetes 1.36 (RuntimeConfig CRI call, cgroup driver via CRI).
CONTAINERD_VERSION=${CONTAINERD_VERSION:-v2.3.7}
RUNC_VERSION=${RUNC_VERSION:-v1.5.2}
HELM_VERSION=${HELM_VERSION:-v3.22.0}
CRICTL_VERSION=${CRICTL_VERSION:-v1.37.0}
# The CNCF distribution registry: a local registry on loopback, so tests can pull real images.
REGISTRY_VERSION=${REGISTRY_VERSION:-v3.0.0}
# CoreDNS, the cluster DNS every kubeadm cluster runs, as a host daemon (helm test resolves Services).
COREDNS_VERSION=${COREDNS_VERSION:-v1.15.0}
