# shellcheck shell=bash
# Starts the control plane on the host: etcd (TLS, own CA), kube-apiserver (Node,RBAC authorization,
# NodeRestriction), kube-controller-manager and kube-scheduler (own client certs), and one kube-proxy
# (iptables mode) so pods reach the API server through the `kubernetes` Service like on any cluster.
# Each start is skipped when that component is already running and healthy.

start_etcd() {
  daemon_running etcd && return
  mkdir -p "$RUN_DIR/etcd"
  start_daemon etcd etcd --name sps-etcd --data-dir "$RUN_DIR/etcd" \
    --listen-client-urls "https://127.0.0.1:$ETCD_CLIENT_PORT" --advertise-client-urls "https://127.0.0.1:$ETCD_CLIENT_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "sps-etcd=http://127.0.0.1:$ETCD_PEER_PORT" \
    --listen-metrics-urls "http://127.0.0.1:2381" \
    --cert-file "$CERT_DIR/etcd-server.crt" --key-file "$CERT_DIR/etcd-server.key" \
    --client-cert-auth --trusted-ca-file "$CERT_DIR/etcd-ca.crt" \
    --quota-backend-bytes 4294967296 --snapshot-count 10000
  wait_daemon etcd 60 curl -sf http://127.0.0.1:2381/health
}

start_apiserver() {
  daemon_running kube-apiserver && return
  start_daemon kube-apiserver kube-apiserver \
    --advertise-address "$API_ADDRESS" --bind-address 0.0.0.0 --secure-port "$API_PORT" \
    --etcd-servers "https://127.0.0.1:$ETCD_CLIENT_PORT" --etcd-cafile "$CERT_DIR/etcd-ca.crt" \
    --etcd-certfile "$CERT_DIR/apiserver-etcd-client.crt" --etcd-keyfile "$CERT_DIR/apiserver-etcd-client.key" \
    --client-ca-file "$CERT_DIR/ca.crt" \
    --tls-cert-file "$CERT_DIR/apiserver.crt" --tls-private-key-file "$CERT_DIR/apiserver.key" \
    --kubelet-client-certificate "$CERT_DIR/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$CERT_DIR/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$CERT_DIR/ca.crt" --kubelet-preferred-address-types InternalIP \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --allow-privileged=true --anonymous-auth=true \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$CERT_DIR/sa.pub" --service-account-signing-key-file "$CERT_DIR/sa.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" --enable-bootstrap-token-auth=false \
    --profiling=false --event-ttl 1h
  wait_daemon kube-apiserver 120 kubectl --kubeconfig "$KUBECONFIG_ADMIN" get --raw /readyz
  # The API server's own identity may use the kubelet API (logs, exec) like kubeadm's binding.
  kubectl --kubeconfig "$KUBECONFIG_ADMIN" create clusterrolebinding kube-apiserver-kubelet-api \
    --clusterrole system:kubelet-api-admin --user kube-apiserver-kubelet-client \
    --dry-run=client -o yaml | kubectl --kubeconfig "$KUBECONFIG_ADMIN" apply -f - >/dev/null
}

start_controller_manager() {
  daemon_running kube-controller-manager && return
  local kc=$RUN_DIR/controller-manager.kubeconfig
  start_daemon kube-controller-manager kube-controller-manager \
    --kubeconfig "$kc" --authentication-kubeconfig "$kc" --authorization-kubeconfig "$kc" \
    --bind-address 127.0.0.1 --client-ca-file "$CERT_DIR/ca.crt" --root-ca-file "$CERT_DIR/ca.crt" \
    --cluster-signing-cert-file "$CERT_DIR/ca.crt" --cluster-signing-key-file "$CERT_DIR/ca.key" \
    --service-account-private-key-file "$CERT_DIR/sa.key" --use-service-account-credentials=true \
    --service-cluster-ip-range "$SERVICE_CIDR" --controllers '*' --leader-elect=true
  wait_daemon kube-controller-manager 60 curl -skf https://127.0.0.1:10257/healthz
}

start_scheduler() {
  daemon_running kube-scheduler && return
  local kc=$RUN_DIR/scheduler.kubeconfig
  start_daemon kube-scheduler kube-scheduler \
    --kubeconfig "$kc" --authentication-kubeconfig "$kc" --authorization-kubeconfig "$kc" \
    --bind-address 127.0.0.1 --leader-elect=true
  wait_daemon kube-scheduler 60 curl -skf https://127.0.0.1:10259/healthz
}

# Brings the API server back after a test stopped it. kube-controller-manager and kube-scheduler
# exit when they cannot renew their leader lease (10 s), as on a real node, where the kubelet would
# restart them; here nothing would, and the next suite would find no DaemonSet or Deployment
# controller. So they are started again if they exited.
restore_control_plane() {
  daemon_running kube-apiserver || start_apiserver
  start_controller_manager
  start_scheduler
}

start_kube_proxy() {
  daemon_running kube-proxy && return
  cat >"$RUN_DIR/kube-proxy.yaml" <<CFG
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $RUN_DIR/kube-proxy.kubeconfig
mode: iptables
clusterCIDR: 10.88.0.0/16
hostnameOverride: ${NODES[0]}
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack:
  # Leave the host's conntrack sysctls as they are: both nodes share this host's kernel.
  maxPerCore: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
CFG
  start_daemon kube-proxy kube-proxy --config "$RUN_DIR/kube-proxy.yaml"
  wait_daemon kube-proxy 60 curl -sf http://127.0.0.1:10256/healthz
}

start_control_plane() {
  ip addr show dev lo | grep -q "inet $API_ADDRESS/" || ip addr add "$API_ADDRESS/32" dev lo
  timed "etcd start" start_etcd
  timed "kube-apiserver start" start_apiserver
  timed "kube-controller-manager start" start_controller_manager
  timed "kube-scheduler start" start_scheduler
}
