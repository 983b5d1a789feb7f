#!/bin/sh
# tessera-install-cni: installs the Tessera CNI IPAM plugin on a Kubernetes node.
#
# Run by the tessera-node DaemonSet (deploy/60-node.yaml) with the node's /opt/cni/bin and
# /etc/cni/net.d mounted. It
#   1. copies the service-account token and the cluster CA next to the network configuration,
#   2. writes a kubeconfig (mode 0600) naming them, for the plugin's Kubernetes lookups,
#   3. copies the tessera-ipam binary into the CNI binary directory,
#   4. renders the network configuration template with the node name and the datastore,
# each file written beside its destination and renamed over it, so the container runtime never
# reads a half-written file and a running plugin keeps its old binary. The network
# configuration comes last: once it exists, the runtime may call the plugin.
# Then (unless --once is given) it keeps the copies fresh: the kubelet rotates the pod's
# projected token (and updates the etcd TLS files when their Secret changes), and each copy is
# replaced whenever its source changes.
#
# Settings, from the environment (defaults fit the DaemonSet):
#   NODE_NAME                 this node's name (downward API spec.nodeName); required
#   TESSERA_DATASTORE         datastore URL, e.g. etcd://tessera-etcd.tessera-system:2379; required
#   KUBERNETES_SERVICE_HOST   API server address, set by the kubelet; required
#   KUBERNETES_SERVICE_PORT   API server port, set by the kubelet; required
#   TESSERA_ETCD_CA, TESSERA_ETCD_CERT, TESSERA_ETCD_KEY   etcd TLS files in this container
#                             (optional); copied to the host and named in the configuration
#   TESSERA_ETCD_PREFIX       etcd key prefix (optional)
#   TESSERA_IPAM_BINARY       plugin binary to install   [/usr/local/bin/tessera-ipam]
#   CNI_BIN_DIR               host's CNI binary directory, as mounted   [/host/opt/cni/bin]
#   CNI_NET_DIR               host's CNI configuration directory, as mounted [/host/etc/cni/net.d]
#   CNI_NET_DIR_ON_HOST       the same directory as the host sees it   [/etc/cni/net.d]
#   CNI_CONF_NAME             name of the network configuration file   [10-tessera.conflist]
#   CNI_CONF_TEMPLATE         template to render   [/etc/tessera/cni/conflist.template]
#   SERVICE_ACCOUNT_DIR       projected service-account volume (token, ca.crt)
#                             [/var/run/secrets/tessera/serviceaccount]
#   TOKEN_REFRESH_SECONDS     how often to look for a rotated token or TLS file   [10]
#
# Template placeholders: __NODENAME__, __DATASTORE__, __KUBECONFIG_FILEPATH__ and
# __ETCD_OPTIONS__ (the etcd_* fields, each followed by a comma, or nothing).

set -eu

TESSERA_IPAM_BINARY=${TESSERA_IPAM_BINARY:-/usr/local/bin/tessera-ipam}
CNI_BIN_DIR=${CNI_BIN_DIR:-/host/opt/cni/bin}
CNI_NET_DIR=${CNI_NET_DIR:-/host/etc/cni/net.d}
CNI_NET_DIR_ON_HOST=${CNI_NET_DIR_ON_HOST:-/etc/cni/net.d}
CNI_CONF_NAME=${CNI_CONF_NAME:-10-tessera.conflist}
CNI_CONF_TEMPLATE=${CNI_CONF_TEMPLATE:-/etc/tessera/cni/conflist.template}
SERVICE_ACCOUNT_DIR=${SERVICE_ACCOUNT_DIR:-/var/run/secrets/tessera/serviceaccount}
TOKEN_REFRESH_SECONDS=${TOKEN_REFRESH_SECONDS:-10}

KUBECONFIG_NAME=tessera-kubeconfig
TOKEN_NAME=tessera-token
CA_NAME=tessera-ca.crt
ETCD_TLS_NAME=tessera-etcd-tls

log() {
    echo "tessera-install-cni: $*" >&2
}

fail() {
    log "$*"
    exit 1
}

# Refuses a setting that is unset or empty, saying where it should come from.
require() {
    eval "value=\${$1:-}"
    [ -n "$value" ] || fail "$1 is not set; $2"
}

# Refuses characters that would break the JSON or YAML the value is written into.
check_plain() {
    case "$2" in
    *[\"\\\|\&]* | *'
'*)
        fail "$1 ($2) holds a quote, backslash, '|', '&' or newline; use a plain value" ;;
    esac
}

# Copies $1 to $2 with mode $3 when their contents differ: written beside the destination,
# then renamed over it. Prints "changed" when it wrote.
sync_file() {
    if [ -f "$2" ] && cmp -s "$1" "$2"; then
        return 0
    fi
    tmp="$(dirname "$2")/.$(basename "$2").tmp"
    (umask 077 && cp "$1" "$tmp") || { rm -f "$tmp"; fail "cannot copy $1 to $tmp"; }
    chmod "$3" "$tmp" && mv -f "$tmp" "$2" || { rm -f "$tmp"; fail "cannot replace $2"; }
    echo changed
}

# Writes standard input to $1 with mode $2, the same way as sync_file.
write_file() {
    rendered="$(dirname "$1")/.$(basename "$1").new"
    (umask 077 && cat >"$rendered") || { rm -f "$rendered"; fail "cannot write $rendered"; }
    changed=$(sync_file "$rendered" "$1" "$2") || { rm -f "$rendered"; exit 1; }
    rm -f "$rendered"
    [ -z "$changed" ] || log "wrote $1"
}

check_settings() {
    require NODE_NAME "set it from the downward API (fieldRef spec.nodeName)"
    require TESSERA_DATASTORE "set it in the tessera-datastore ConfigMap (deploy/30-datastore.yaml)"
    require KUBERNETES_SERVICE_HOST "the kubelet sets it in every pod; run this inside a pod"
    require KUBERNETES_SERVICE_PORT "the kubelet sets it in every pod; run this inside a pod"
    for name in NODE_NAME TESSERA_DATASTORE KUBERNETES_SERVICE_HOST KUBERNETES_SERVICE_PORT \
        CNI_NET_DIR_ON_HOST TESSERA_ETCD_PREFIX; do
        eval "check_plain $name \"\${$name:-}\""
    done
    for file in "$TESSERA_IPAM_BINARY" "$CNI_CONF_TEMPLATE" "$SERVICE_ACCOUNT_DIR/token" \
        "$SERVICE_ACCOUNT_DIR/ca.crt"; do
        [ -r "$file" ] || fail "cannot read $file; check the image and the DaemonSet's volumes"
    done
    case "$TOKEN_REFRESH_SECONDS" in
    '' | *[!0-9]* | 0) fail "TOKEN_REFRESH_SECONDS ($TOKEN_REFRESH_SECONDS) must be a whole number of seconds above 0" ;;
    esac
    for dir in "$CNI_BIN_DIR" "$CNI_NET_DIR"; do
        [ -d "$dir" ] && [ -w "$dir" ] ||
            fail "$dir is not a writable directory; mount the host's directory there"
    done
}

# Copies the token and the CA beside the kubeconfig; prints "changed" when either changed.
sync_credentials() {
    sync_file "$SERVICE_ACCOUNT_DIR/token" "$CNI_NET_DIR/$TOKEN_NAME" 0600
    sync_file "$SERVICE_ACCOUNT_DIR/ca.crt" "$CNI_NET_DIR/$CA_NAME" 0644
}

write_kubeconfig() {
    case "$KUBERNETES_SERVICE_HOST" in
    *:*) server="https://[$KUBERNETES_SERVICE_HOST]:$KUBERNETES_SERVICE_PORT" ;;
    *) server="https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT" ;;
    esac
    write_file "$CNI_NET_DIR/$KUBECONFIG_NAME" 0600 <<EOF
# Written by tessera-install-cni for the tessera-ipam CNI plugin; do not edit.
apiVersion: v1
kind: Config
clusters:
- name: kubernetes
  cluster:
    server: "$server"
    certificate-authority: "$CNI_NET_DIR_ON_HOST/$CA_NAME"
users:
- name: tessera-ipam
  user:
    tokenFile: "$CNI_NET_DIR_ON_HOST/$TOKEN_NAME"
contexts:
- name: tessera-ipam
  context:
    cluster: kubernetes
    user: tessera-ipam
current-context: tessera-ipam
EOF
}

# The etcd TLS files: the variable naming one in this container, its copy on the node, and
# the conflist field naming the copy.
ETCD_TLS_FILES="TESSERA_ETCD_CA:ca.crt:etcd_ca TESSERA_ETCD_CERT:client.crt:etcd_cert
TESSERA_ETCD_KEY:client.key:etcd_key"

# Copies the etcd TLS files that are set to the node; prints "changed" when one changed.
sync_etcd_tls() {
    for entry in $ETCD_TLS_FILES; do
        variable=${entry%%:*}
        rest=${entry#*:}
        eval "source=\${$variable:-}"
        [ -n "$source" ] || continue
        [ -r "$source" ] || fail "cannot read $source (from $variable); check the tessera-etcd-tls Secret"
        mkdir -p "$CNI_NET_DIR/$ETCD_TLS_NAME" && chmod 0700 "$CNI_NET_DIR/$ETCD_TLS_NAME"
        sync_file "$source" "$CNI_NET_DIR/$ETCD_TLS_NAME/${rest%%:*}" 0600
    done
}

# The conflist fields naming the etcd TLS copies and the key prefix, each followed by a comma.
etcd_options() {
    for entry in $ETCD_TLS_FILES; do
        variable=${entry%%:*}
        rest=${entry#*:}
        eval "source=\${$variable:-}"
        [ -z "$source" ] ||
            printf ' "%s": "%s",' "${rest#*:}" "$CNI_NET_DIR_ON_HOST/$ETCD_TLS_NAME/${rest%%:*}"
    done
    [ -z "${TESSERA_ETCD_PREFIX:-}" ] || printf ' "etcd_prefix": "%s",' "$TESSERA_ETCD_PREFIX"
}

write_conflist() {
    options=$(etcd_options)
    sed -e "s|__NODENAME__|$NODE_NAME|g" \
        -e "s|__DATASTORE__|$TESSERA_DATASTORE|g" \
        -e "s|__KUBECONFIG_FILEPATH__|$CNI_NET_DIR_ON_HOST/$KUBECONFIG_NAME|g" \
        -e "s|__ETCD_OPTIONS__|$options|g" \
        "$CNI_CONF_TEMPLATE" | write_file "$CNI_NET_DIR/$CNI_CONF_NAME" 0644
}

install() {
    check_settings
    sync_credentials >/dev/null
    sync_etcd_tls >/dev/null
    write_kubeconfig
    changed=$(sync_file "$TESSERA_IPAM_BINARY" "$CNI_BIN_DIR/tessera-ipam" 0755)
    [ -z "$changed" ] || log "installed $CNI_BIN_DIR/tessera-ipam"
    write_conflist
    log "node $NODE_NAME is ready for pods (datastore $TESSERA_DATASTORE)"
}

# Runs one of the sync functions ($2) and logs what it did with the files ($1).
refresh() {
    if ! changed=$($2); then
        log "cannot copy the $1 to $CNI_NET_DIR; trying again"
    elif [ -n "$changed" ]; then
        log "refreshed the $1 in $CNI_NET_DIR"
    fi
}

keep_credentials_fresh() {
    # Sleeping in the background lets the trap run at once; the sleep ends by itself.
    trap 'exit 0' TERM INT
    while :; do
        sleep "$TOKEN_REFRESH_SECONDS" &
        wait $! || true
        refresh "service-account token" sync_credentials
        refresh "etcd TLS files" sync_etcd_tls
    done
}

case "${1:-}" in
--once) install ;;
# Each on its own line: a function run as the left side of && would ignore set -e.
"")
    install
    keep_credentials_fresh
    ;;
*) fail "unknown argument $1; run without arguments, or with --once to install and exit" ;;
esac
