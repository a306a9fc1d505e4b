# shellcheck shell=bash
# Makes the cluster's PKI with openssl, laid out like kubeadm's:
#   ca            the cluster CA: signs the API server's serving cert, every client cert and the
#                 kubelets' serving certs; the API server trusts client certs it signed
#   etcd-ca       a separate CA for etcd, so a cluster client cert cannot talk to etcd directly
#   sa.key/.pub   the service-account token signing key pair
# Client identities (CN / O) are the ones the Node and RBAC authorizers expect, e.g. a kubelet is
# CN=system:node:<name>, O=system:nodes, which NodeRestriction keys on.
# Kept once made: a second `up` reuses the PKI, so existing kubeconfigs stay valid.

_ca() { # name cn
  [[ -f $CERT_DIR/$1.crt ]] && return
  openssl ecparam -name prime256v1 -genkey -noout -out "$CERT_DIR/$1.key" 2>/dev/null
  openssl req -x509 -new -key "$CERT_DIR/$1.key" -subj "/CN=$2" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$CERT_DIR/$1.crt" 2>/dev/null
}

# _cert NAME CA SUBJECT USAGE [SANS]   USAGE: serverAuth | clientAuth | serverAuth,clientAuth
_cert() {
  local name=$1 ca=$2 subj=$3 usage=$4 sans=${5:-}
  [[ -f $CERT_DIR/$name.crt ]] && return
  local ext
  ext=$(mktemp)
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$usage"
    [[ -n $sans ]] && echo "subjectAltName=$sans"
  } >"$ext"
  openssl ecparam -name prime256v1 -genkey -noout -out "$CERT_DIR/$name.key" 2>/dev/null
  openssl req -new -key "$CERT_DIR/$name.key" -subj "$subj" -out "$CERT_DIR/$name.csr" 2>/dev/null
  openssl x509 -req -in "$CERT_DIR/$name.csr" -CA "$CERT_DIR/$ca.crt" -CAkey "$CERT_DIR/$ca.key" \
    -CAcreateserial -days 365 -sha256 -extfile "$ext" -out "$CERT_DIR/$name.crt" 2>/dev/null
  rm -f "$ext" "$CERT_DIR/$name.csr"
}

# kubeconfig NAME USER_CERT   -> $RUN_DIR/NAME.kubeconfig, for client-cert users of the API server
write_kubeconfig() {
  local name=$1 cert=$2
  cat >"$RUN_DIR/$name.kubeconfig" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: staticpodset-e2e
  cluster:
    server: https://$API_ADDRESS:$API_PORT
    certificate-authority: $CERT_DIR/ca.crt
users:
- name: $name
  user:
    client-certificate: $CERT_DIR/$cert.crt
    client-key: $CERT_DIR/$cert.key
contexts:
- name: staticpodset-e2e
  context: {cluster: staticpodset-e2e, user: $name}
current-context: staticpodset-e2e
KCFG
}

make_pki() {
  mkdir -p "$CERT_DIR"
  chmod 700 "$CERT_DIR"
  _ca ca kubernetes-ca
  _ca etcd-ca etcd-ca
  _cert etcd-server etcd-ca "/CN=etcd" serverAuth,clientAuth "IP:127.0.0.1,DNS:localhost"
  _cert apiserver-etcd-client etcd-ca "/CN=kube-apiserver-etcd-client" clientAuth
  _cert apiserver ca "/CN=kube-apiserver" serverAuth \
    "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:$API_ADDRESS,IP:$SERVICE_API_IP"
  _cert apiserver-kubelet-client ca "/CN=kube-apiserver-kubelet-client/O=kubeadm:cluster-admins" clientAuth
  _cert admin ca "/CN=kubernetes-admin/O=system:masters" clientAuth
  _cert controller-manager ca "/CN=system:kube-controller-manager" clientAuth
  _cert scheduler ca "/CN=system:kube-scheduler" clientAuth
  _cert kube-proxy ca "/CN=system:kube-proxy" clientAuth
  local n
  for n in "${NODES[@]}"; do
    _cert "kubelet-$n" ca "/CN=system:node:$n/O=system:nodes" clientAuth
    _cert "kubelet-$n-serving" ca "/CN=system:node:$n/O=system:nodes" serverAuth "DNS:$n,IP:$API_ADDRESS,IP:127.0.0.1"
  done
  if [[ ! -f $CERT_DIR/sa.key ]]; then
    openssl genrsa -out "$CERT_DIR/sa.key" 2048 2>/dev/null
    openssl rsa -in "$CERT_DIR/sa.key" -pubout -out "$CERT_DIR/sa.pub" 2>/dev/null
  fi
  write_kubeconfig admin admin
  write_kubeconfig controller-manager controller-manager
  write_kubeconfig scheduler scheduler
  write_kubeconfig kube-proxy kube-proxy
  for n in "${NODES[@]}"; do write_kubeconfig "kubelet-$n" "kubelet-$n"; done
}
