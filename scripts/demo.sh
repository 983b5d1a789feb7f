#!/usr/bin/env bash
# Builds `tessera` and walks the topology-pool scenario (racks chosen by node label) on a
# fresh embedded store, printing each command and its output. Leaves the user's own store
# alone: the demo store lives in a temporary directory that is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

# Needs only a Rust toolchain and a C compiler (SQLite and the TLS library are compiled from
# source); no root, no other system package.
if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
  PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null; then
  echo "cargo not found: install a Rust toolchain (https://rustup.rs) and gcc, then run again" >&2
  exit 1
fi
if ! command -v "${CC:-cc}" >/dev/null; then
  echo "no C compiler (${CC:-cc}) found: install gcc (Debian: apt-get install gcc libc6-dev)," \
    "then run again" >&2
  exit 1
fi
cargo build --release --locked -q -p tessera-cli
tessera="$PWD/target/release/tessera"

demo_dir=$(mktemp -d)
trap 'rm -rf "$demo_dir"' EXIT
export TESSERA_DATASTORE="$demo_dir/tessera.db"

run() {
  echo "\$ tessera $*"
  "$tessera" "$@"
  echo
}

run apply -f examples/default-pool.yaml
run get ippool -o wide
for n in 0 1 2 3; do run label node "kube-node-$n" "rack=$((n / 2))"; done
run ipam assign --node kube-node-0 --handle k8s-pod-network.old --namespace default --pod old
run delete ippools default-ipv4-ippool
run create -f examples/rack-pools.yaml
run get ippool -o wide
for i in 0 1 2 3 4; do
  node="kube-node-$(( (i * 7 / 5) % 4 ))"
  run ipam assign --node "$node" --handle "k8s-pod-network.nginx-$i" --namespace default --pod "nginx-$i"
done
run ipam show --show-blocks
run ipam show --ip 192.168.1.1
run ipam release --handle k8s-pod-network.old
run ipam check
run status
