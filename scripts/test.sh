#!/usr/bin/env bash
# Runs every test of the project, installing what the tests need first.
# On a fresh Debian 12 machine as root (CI runs exactly this, via .ci/run):
# unit tests, integration tests over loopback mTLS, the benchmark smoke run,
# and the real-node tests (systemd-nspawn Debian nodes, built once and cached).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo is not installed; install a Rust toolchain (rustup) first" >&2
    exit 1
fi

if [ "$(id -u)" -eq 0 ]; then
    step "tools for real-node tests (debootstrap, systemd-nspawn, dpkg-dev, shellcheck), etcd, protoc, and the cached node root"
    if ! command -v shellcheck >/dev/null 2>&1 || ! command -v etcd >/dev/null 2>&1 \
        || ! command -v etcdctl >/dev/null 2>&1 || ! command -v protoc >/dev/null 2>&1 \
        || ! /usr/bin/python3 -c 'import prometheus_client' >/dev/null 2>&1 \
        || ! command -v iptables >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
        apt-get update -q >/dev/null
        # etcd-server/etcd-client: the real etcd the store tests run against;
        # protobuf-compiler: the etcd-client crate compiles etcd's protos with protoc.
        # python3-prometheus-client: the Prometheus project's parser reads /metrics in a test;
        # iptables: the nemesis partitions etcd members inside their network namespaces;
        # chromium, chromium-driver: the dashboard's tests drive a real headless browser.
        apt-get install -y -q shellcheck etcd-server etcd-client protobuf-compiler \
            python3-prometheus-client iptables chromium chromium-driver >/dev/null
    fi
    scripts/node-root.sh
    export BALLAST_NODE_TESTS=1
else
    echo "note: not root, so the real-node tests are skipped (they need debootstrap and systemd-nspawn)"
    if ! command -v protoc >/dev/null 2>&1; then
        echo "error: protoc is not installed; the etcd client needs it to build: apt-get install protobuf-compiler" >&2
        exit 1
    fi
    command -v etcd >/dev/null 2>&1 \
        || echo "note: etcd is not installed, so the etcd store tests are skipped (apt-get install etcd-server etcd-client)"
fi

step "house rules: formatting and lints (cargo fmt --check, clippy -D warnings)"
for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        echo "error: the toolchain has no $component; install it with: rustup component add $component" >&2
        exit 1
    fi
done
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings

step "build the binaries that real nodes and packages use"
cargo build --locked -p ballast-agent -p ballast-controller

step "all tests (unit, integration, real nodes, benchmark smoke run)"
cargo test --workspace --locked --all-targets 2>&1
