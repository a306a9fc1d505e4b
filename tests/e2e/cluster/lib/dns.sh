# shellcheck shell=bash
# Cluster DNS: CoreDNS (built from its Go module, tests/e2e/cluster/build/components.sh) as a host
# daemon on $API_ADDRESS:$DNS_PORT, serving the cluster.local zone from the API server, and the
# Service kube-system/kube-dns at $CLUSTER_DNS (the kubelets' clusterDNS) with an EndpointSlice
# pointing at it, so kube-proxy carries pods' queries there. Names outside cluster.local are
# refused: the cluster has no upstream resolver.

DNS_PORT=${DNS_PORT:-1053}
DNS_READY_PORT=${DNS_READY_PORT:-8181}

start_dns() {
  daemon_running coredns && return
  mkdir -p "$RUN_DIR/coredns"
  cat >"$RUN_DIR/coredns/Corefile" <<CORE
cluster.local:$DNS_PORT {
  bind $API_ADDRESS
  errors
  ready 127.0.0.1:$DNS_READY_PORT
  kubernetes cluster.local {
    kubeconfig $KUBECONFIG_ADMIN
  }
}
CORE
  start_daemon coredns coredns -conf "$RUN_DIR/coredns/Corefile"
  kubectl --kubeconfig "$KUBECONFIG_ADMIN" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: $CLUSTER_DNS
  ports:
  - {name: dns, port: 53, protocol: UDP, targetPort: $DNS_PORT}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: $DNS_PORT}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kube-dns-host
  namespace: kube-system
  labels: {kubernetes.io/service-name: kube-dns, endpointslice.kubernetes.io/managed-by: staticpodset-e2e}
addressType: IPv4
endpoints:
- addresses: [$API_ADDRESS]
  conditions: {ready: true}
ports:
- {name: dns, port: $DNS_PORT, protocol: UDP}
- {name: dns-tcp, port: $DNS_PORT, protocol: TCP}
YAML
  # CoreDNS's ready plugin answers once the kubernetes plugin has synced with the API server.
  wait_daemon coredns 60 curl -sf "http://127.0.0.1:$DNS_READY_PORT/ready"
}
