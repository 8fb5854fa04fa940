#!/usr/bin/env bash
# The whole test suite, exactly what CI runs (.ci/run calls this script).
#
# Installs missing system packages (apt-get: build tools, through scripts/build-deps.sh as
# scripts/run.sh does, Redis, PostgreSQL, and Debian's chromium and nodejs/npm for the browser
# test) and the browser test's playwright-core (`npm ci` in tests/browser), starts a throwaway
# Redis and PostgreSQL on free loopback ports (never the machine's own services), then: cargo
# fmt --check, cargo clippy with -D warnings, `gatehouse check gateway.yaml`,
# scripts/check_run_sh.sh (scripts/run.sh's fresh-machine path, dry run), the deployment files
# (no Docker engine or cluster needed: `docker-compose config -q` from Debian's docker-compose
# package; scripts/check_deploy.py, a structural check of the Dockerfile, compose file and
# deploy/k8s with PyYAML; the k8s manifests against Kubernetes' schemas with PyPI's
# kubernetes-validate, in a venv next to $CARGO_TARGET_DIR), and cargo test with REDIS_URL and
# DATABASE_URL pointing at the throwaway instances. Everything started is stopped on exit.
# cargo test includes tests/layers.rs: the module graph of src/ (from its `crate::` paths) has
# no import cycle, there is no mod.rs, and each module's "Layer: …; must not import …" doc is
# true.
# The browser test's screenshots are left in test-artifacts/browser/ (git-ignored).
# Exits non-zero on any failure.
# Builds go to $CARGO_TARGET_DIR (default ~/.cache/gatehouse/target, outside the clone, so
# fresh clones on the same machine reuse the compiled dependencies).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gatehouse/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n==> %s\n' "$*"; }

# ensure_build_tools: cmake, cc (gcc), g++ and make, which Pingora's zlib-ng is built with
# (shared with scripts/run.sh).
# shellcheck source=scripts/build-deps.sh
source scripts/build-deps.sh

install_packages() {
  local missing=()
  command -v kill >/dev/null 2>&1 || missing+=(procps)
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  command -v openssl >/dev/null 2>&1 || missing+=(openssl)
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
  # The browser test (tests/browser.rs): Debian's Chromium, driven by playwright-core on Node.
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  # The deployment files' checks: docker-compose v1 validates the compose file offline;
  # scripts/check_deploy.py needs python3 with PyYAML.
  command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
  command -v python3 >/dev/null 2>&1 || missing+=(python3)
  python3 -c 'import yaml' >/dev/null 2>&1 || missing+=(python3-yaml)
  python3 -c 'import ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
  command -v node >/dev/null 2>&1 || missing+=(nodejs)
  command -v npm >/dev/null 2>&1 || missing+=(npm)
  # The build tools it finds missing and these go into one apt-get run (sudo when not root).
  ensure_build_tools ${missing[@]+"${missing[@]}"}
}

install_packages
# A python3 other than Debian's (pyenv, say) does not see python3-yaml: use pip there.
if ! python3 -c 'import yaml' >/dev/null 2>&1; then
  step "pip install pyyaml"
  python3 -m pip install --quiet pyyaml
fi
for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    step "rustup component add $component"
    rustup component add "$component"
  fi
done

# playwright-core for the browser test, at the version pinned in tests/browser/package-lock.json.
# It drives the system Chromium, so no browser is downloaded.
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  step "npm ci --prefix tests/browser"
  npm ci --prefix tests/browser --no-audit --no-fund
fi

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

SERVICES_DIR=$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-services.XXXXXX")
cleanup() {
  if [ -f "$SERVICES_DIR/redis.pid" ]; then kill "$(cat "$SERVICES_DIR/redis.pid")" 2>/dev/null || true; fi
  if [ -d "$SERVICES_DIR/pg" ]; then
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$SERVICES_DIR/pg" -m immediate stop >/dev/null 2>&1 || true
  fi
  rm -rf "$SERVICES_DIR"
}
trap cleanup EXIT

start_redis() {
  local port
  port=$(free_port)
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$SERVICES_DIR" \
    --daemonize yes --pidfile "$SERVICES_DIR/redis.pid" --logfile "$SERVICES_DIR/redis.log"
  for _ in $(seq 1 100); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  export REDIS_URL="redis://127.0.0.1:$port/0"
  echo "throwaway Redis: $REDIS_URL"
}

start_postgres() {
  local port
  port=$(free_port)
  PG_BIN=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)")
  mkdir -p "$SERVICES_DIR/pg" "$SERVICES_DIR/pgsock"
  chown postgres "$SERVICES_DIR" "$SERVICES_DIR/pg" "$SERVICES_DIR/pgsock"
  runuser -u postgres -- "$PG_BIN/initdb" -D "$SERVICES_DIR/pg" -U postgres --auth=trust >/dev/null
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$SERVICES_DIR/pg" -l "$SERVICES_DIR/pg.log" -w \
    -o "-p $port -c listen_addresses=127.0.0.1 -k $SERVICES_DIR/pgsock -c fsync=off" start >/dev/null
  runuser -u postgres -- "$PG_BIN/createdb" -h 127.0.0.1 -p "$port" -U postgres gatehouse_test
  export DATABASE_URL="postgres://postgres@127.0.0.1:$port/gatehouse_test"
  echo "throwaway PostgreSQL: $DATABASE_URL"
}

step "starting throwaway Redis and PostgreSQL"
start_redis
start_postgres

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings

step "gatehouse check -c gateway.yaml"
cargo build --quiet --bin gatehouse
"$CARGO_TARGET_DIR/debug/gatehouse" check -c gateway.yaml

step "scripts/run.sh on a fresh machine: cmake hidden, GATEHOUSE_SETUP_DRY_RUN=1"
bash scripts/check_run_sh.sh

step "deployment files: docker-compose config, Dockerfile, deploy/k8s"
docker-compose --env-file .env.example -f docker-compose.yml config -q
echo "docker-compose.yml: valid ($(docker-compose version --short 2>/dev/null || echo docker-compose))"
python3 scripts/check_deploy.py --gatehouse "$CARGO_TARGET_DIR/debug/gatehouse"
# Kubernetes' own OpenAPI schemas (shipped in the PyPI package), strict: an unknown or
# misspelt field fails. In a venv kept next to the build cache.
K8S_VALIDATE_VENV="$(dirname "$CARGO_TARGET_DIR")/kubernetes-validate-venv"
if [ ! -x "$K8S_VALIDATE_VENV/bin/kubernetes-validate" ]; then
  step "pip install kubernetes-validate (venv $K8S_VALIDATE_VENV)"
  python3 -m venv "$K8S_VALIDATE_VENV"
  "$K8S_VALIDATE_VENV/bin/pip" install --quiet kubernetes-validate
fi
k8s_manifests=()
for f in deploy/k8s/*.yaml; do
  [ "$(basename "$f")" = kustomization.yaml ] || k8s_manifests+=("$f")
done
for k8s_version in 1.30 ""; do
  "$K8S_VALIDATE_VENV/bin/kubernetes-validate" --strict --quiet ${k8s_version:+-k "$k8s_version"} "${k8s_manifests[@]}"
done
echo "deploy/k8s: valid against the Kubernetes 1.30 and $("$K8S_VALIDATE_VENV/bin/kubernetes-validate" --version) schemas (strict)"

step "cargo test"
cargo test 2>&1 | tee "${TMPDIR:-/tmp}/gatehouse-test.log"
