#!/usr/bin/env bash
# Installs what weft's build, demo and tests need on a fresh Debian 12 machine (as root).
# Idempotent: packages already present are not fetched again.
set -euo pipefail

packages=(
  iproute2        # ip netns, veth, bridge, vxlan: the test and demo topologies
  iputils-ping    # ping between namespaces
  ethtool         # underlay offloads: read by the tests, off only where interop needs it (perf/src/topo.rs)
  iperf3          # weft-perf's second traffic generator (tcp1-iperf3, tcp4-iperf3)
  kmod            # modprobe for vxlan/tun where they are modules
  pkg-config gcc  # -sys crates
  libelf-dev zlib1g-dev  # libbpf-sys builds its vendored libbpf against them (the AF_XDP pod port, switch/src/io/xsk)
  protobuf-compiler libprotobuf-dev  # protoc and its well-known types: the etcd-client crate compiles etcd's gRPC definitions
  etcd-server etcd-client  # etcd 3.4: the distributed store the tests start (switch/tests/etcd.rs)
  containernetworking-plugins  # reference bridge + host-local: weft-perf's CNI baseline
  podman runc conmon busybox-static  # the podman end-to-end test (switch/tests/podman.rs)
  nftables        # nft: weftd's egress masquerade (switch/src/control/masquerade.rs), kube-proxy's nftables mode in the Services tests
  iptables        # iptables-restore: kube-proxy's iptables mode in the Services tests, portmap, podman
  prometheus      # the metrics test scrapes two nodes with a real Prometheus (switch/tests/metrics.rs)
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # iperf3 asks whether to run a system-wide server; weft-perf starts its own, in a pod.
  echo "iperf3 iperf3/start_daemon boolean false" | debconf-set-selections
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  # Debian starts etcd as a system service on install; the tests run their own, on
  # ports of their own, so the service is only in the way.
  if printf '%s\n' "${missing[@]}" | grep -qx etcd-server && command -v systemctl >/dev/null \
      && [ -d /run/systemd/system ]; then
    systemctl disable --now etcd >/dev/null 2>&1 || true
  fi
  # Likewise Prometheus: the metrics test starts its own, in a test namespace.
  if printf '%s\n' "${missing[@]}" | grep -qx prometheus && command -v systemctl >/dev/null \
      && [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi

# Kernel pieces the datapath and the baselines use; built in on some kernels.
for m in tun vxlan veth bridge; do
  modprobe -q "$m" 2>/dev/null || true
done
[ -c /dev/net/tun ] || { mkdir -p /dev/net && mknod /dev/net/tun c 10 200; }

command -v cargo >/dev/null || {
  echo "setup: cargo not found; install the Rust toolchain (rustup) first" >&2
  exit 1
}
# The test command lints with clippy first.
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
