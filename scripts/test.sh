#!/usr/bin/env bash
# The whole test suite, as the README and CI run it: installs what a fresh machine of this
# kind lacks (Debian's redis-server, PostgreSQL, pebble, etcd, dnsmasq, Chromium,
# curl and openssl; schemathesis and grpcio from PyPI; oidc-provider from npm), starts PostgreSQL
# when none answers, then runs formatting, lints and every test binary.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then
    $SUDO apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

# A fresh machine has rustup's toolchain; make sure the lint components are there.
if command -v rustup >/dev/null 2>&1; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi

# The cluster rate-limit tests start (and kill) their own redis-server on a free port; they
# need the binary, not a running server.
if ! command -v redis-server >/dev/null 2>&1; then
  echo "== installing redis-server"
  apt_install redis-server
fi

# The store tests use the local PostgreSQL (trust auth on 127.0.0.1:5432), each in a database
# of its own. Install and start it when this machine has none running.
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "== installing postgresql"
    apt_install postgresql
  fi
  echo "== starting postgresql"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | tail -1)" main start || true
  for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi

# The admin API's spec is fuzzed by schemathesis (PyPI) in the test suite.
if ! command -v schemathesis >/dev/null 2>&1; then
  echo "== installing schemathesis"
  python3 -m pip install -q schemathesis
fi

# The CC protection test runs its JavaScript challenge in a real browser: Debian's Chromium.
if ! command -v chromium >/dev/null 2>&1; then
  echo "== installing chromium"
  apt_install chromium
fi

# The TLS tests check the listeners with curl and `openssl s_client`.
for tool in curl openssl; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "== installing $tool"
    apt_install "$tool"
  fi
done

# The ACME tests order certificates from a real ACME server: Debian's pebble (with its
# challenge test server as DNS).
if ! command -v pebble >/dev/null 2>&1 || ! command -v pebble-challtestsrv >/dev/null 2>&1; then
  echo "== installing pebble"
  apt_install pebble
fi

# The discovery tests run a real etcd (and write keys with etcdctl) and a real DNS server
# (dnsmasq), each on free loopback ports of its own.
if ! command -v etcd >/dev/null 2>&1 || ! command -v etcdctl >/dev/null 2>&1; then
  echo "== installing etcd"
  apt_install etcd-server etcd-client
fi
if ! command -v dnsmasq >/dev/null 2>&1; then
  echo "== installing dnsmasq"
  apt_install dnsmasq-base
fi

# The gRPC tests run a real gRPC server and client: Python's grpcio (PyPI), at the versions
# the fixture pins.
if ! python3 -c "import grpc, grpc_tools, grpc_health" >/dev/null 2>&1; then
  echo "== installing grpcio"
  python3 -m pip install -q -r crates/gatehouse/tests/fixtures/grpc/requirements.txt
fi

# The openid-connect tests run a real OpenID provider (panva/oidc-provider) on Node.js, from
# the npm registry at the version the lock file pins.
if ! command -v node >/dev/null 2>&1; then
  echo "== installing nodejs"
  apt_install nodejs npm
fi
if [ ! -d crates/gatehouse/tests/fixtures/oidc/node_modules/oidc-provider ]; then
  echo "== installing oidc-provider"
  npm ci --prefix crates/gatehouse/tests/fixtures/oidc --no-audit --no-fund >/dev/null
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

# --no-fail-fast: one failing test binary must not hide the others' results.
echo "== cargo test"
cargo test --workspace --locked --no-fail-fast
