#!/bin/sh
# Installs weft-cni and weft's CNI network config on the host, each atomically: a
# temporary file in the target directory, then a rename, so that a runtime executing
# the plugin or containerd watching the config directory never sees half a file. The
# temporary names start with a dot and end in .tmp, which runtimes ignore.
#
#   weft-install-cni binary    install the plugin (the DaemonSet's init container)
#   weft-install-cni config    wait until weftd answers on its socket, then install the
#                              conflist and stay (the DaemonSet's cni-config container):
#                              the node turns network-ready only once weftd serves ADDs
#
# Environment (defaults are the DaemonSet's mounts):
#   CNI_BIN_DIR    /host/opt/cni/bin          where the plugin goes
#   CNI_CONF_DIR   /host/etc/cni/net.d        where the conflist goes
#   WEFT_CNI       /usr/local/bin/weft-cni    the plugin to install
#   WEFT_CONFLIST  /etc/weft/10-weft.conflist the conflist to install (the ConfigMap's)
#   WEFT_SOCKET    /run/weft/weft.sock        weftd's control socket
#   WEFT           weft                       the weft CLI, to ask weftd for its status
#   WEFT_STAY      1                          0: exit after installing the conflist
set -eu

bin_dir=${CNI_BIN_DIR:-/host/opt/cni/bin}
conf_dir=${CNI_CONF_DIR:-/host/etc/cni/net.d}
plugin=${WEFT_CNI:-/usr/local/bin/weft-cni}
conflist=${WEFT_CONFLIST:-/etc/weft/10-weft.conflist}
socket=${WEFT_SOCKET:-/run/weft/weft.sock}
weft=${WEFT:-weft}

# install_atomic SRC DIR NAME MODE
install_atomic() {
  src=$1 dir=$2 name=$3 mode=$4
  [ -f "$src" ] || { echo "weft-install-cni: $src: no such file" >&2; exit 1; }
  mkdir -p "$dir"
  tmp="$dir/.$name.$$.tmp"
  trap 'rm -f "$tmp"' EXIT
  cp "$src" "$tmp"
  chmod "$mode" "$tmp"
  mv -f "$tmp" "$dir/$name"
  trap - EXIT
  echo "weft-install-cni: installed $dir/$name"
}

case "${1:-}" in
binary)
  install_atomic "$plugin" "$bin_dir" weft-cni 0755
  ;;
config)
  until "$weft" --socket "$socket" status >/dev/null 2>&1; do
    echo "weft-install-cni: waiting for weftd on $socket" >&2
    sleep 2
  done
  install_atomic "$conflist" "$conf_dir" 10-weft.conflist 0644
  if [ "${WEFT_STAY:-1}" = 1 ]; then
    # Stay, so that the container is not restarted in a loop; a signal ends it.
    trap 'exit 0' TERM INT
    while :; do sleep 3600 & wait $!; done
  fi
  ;;
*)
  echo "usage: weft-install-cni binary|config" >&2
  exit 2
  ;;
esac
