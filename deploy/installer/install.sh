#!/bin/sh
# Installs stockade-runtime on the node this pod runs on (the installer
# DaemonSet, deploy/kubernetes/stockade-runtime-installer.yaml), as
# kata-deploy installs Kata: the binaries into the host's /usr/local, the
# `stockade` handler into containerd's configuration, containerd restarted,
# the node labelled so that the RuntimeClass schedules pods onto it. On
# SIGTERM (the DaemonSet removed) it undoes all of it.
#
# The pod's image holds the Debian package's files (/usr/bin/stockade-runtime,
# /usr/libexec/stockade/stockade-init); the host's root is at $HOST.
set -eu
HOST=${HOST:-/host}
NODE=${NODE_NAME:?the DaemonSet passes the node name}
CONF=$HOST/etc/containerd/config.toml
DROPIN=/etc/containerd/conf.d/stockade-runtime.toml

host() { nsenter --target 1 --mount --uts --ipc --net --pid -- "$@"; }

install_runtime() {
    install -D -m 0755 /usr/bin/stockade-runtime "$HOST/usr/local/bin/stockade-runtime"
    # stockade-runtime finds its PID 1 in ../libexec/stockade beside itself.
    install -D -m 0755 /usr/libexec/stockade/stockade-init "$HOST/usr/local/libexec/stockade/stockade-init"
    mkdir -p "$HOST/etc/containerd/conf.d"
    sed 's|/usr/bin/stockade-runtime|/usr/local/bin/stockade-runtime|' \
        /usr/share/stockade/deploy/containerd/stockade-runtime.toml > "$HOST$DROPIN"
    # containerd reads a drop-in only when its config imports it.
    if [ -f "$CONF" ] && ! grep -q 'conf.d/\*.toml' "$CONF"; then
        cp "$CONF" "$CONF.stockade-backup"
        { echo 'imports = ["/etc/containerd/conf.d/*.toml"]'; cat "$CONF.stockade-backup"; } > "$CONF"
    fi
    host systemctl restart containerd
    kubectl label node "$NODE" stockade.io/runtime=true --overwrite
}

uninstall_runtime() {
    kubectl label node "$NODE" stockade.io/runtime- || true
    rm -f "$HOST$DROPIN" "$HOST/usr/local/bin/stockade-runtime" "$HOST/usr/local/libexec/stockade/stockade-init"
    if [ -f "$CONF.stockade-backup" ]; then mv "$CONF.stockade-backup" "$CONF"; fi
    host systemctl restart containerd || true
}

trap 'uninstall_runtime; exit 0' TERM INT
install_runtime
echo "stockade-runtime installed on $NODE"
# Wait for the DaemonSet's removal (sleep in the background: the trap runs at once).
while :; do sleep 3600 & wait $!; done
