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
# DATABASE_URL (and REDIS_SENTINEL_URL, REDIS_CLUSTER_URL) pointing at the throwaway instances. Everything started is stopped on exit.
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
  for pidfile in "$SERVICES_DIR"/*.pid; do
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
  done
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
  wait_redis "$port"
  export REDIS_URL="redis://127.0.0.1:$port/0"
  echo "throwaway Redis: $REDIS_URL"
}

wait_redis() {
  for _ in $(seq 1 100); do
    redis-cli -p "$1" ping >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "redis on port $1 did not start" >&2
  return 1
}

# A Sentinel set: a master, a replica and three sentinels (quorum 2, a master is down after
# 1 s), for tests/redis_topologies.rs (its failover test kills the master).
start_sentinel_set() {
  local master replica s nodes="" first=""
  master=$(free_port)
  replica=$(free_port)
  redis-server --port "$master" --bind 127.0.0.1 --save "" --appendonly no --dir "$SERVICES_DIR" \
    --daemonize yes --pidfile "$SERVICES_DIR/sentinel-master.pid" --logfile "$SERVICES_DIR/sentinel-master.log"
  redis-server --port "$replica" --bind 127.0.0.1 --save "" --appendonly no --dir "$SERVICES_DIR" \
    --replicaof 127.0.0.1 "$master" \
    --daemonize yes --pidfile "$SERVICES_DIR/sentinel-replica.pid" --logfile "$SERVICES_DIR/sentinel-replica.log"
  wait_redis "$master"
  wait_redis "$replica"
  for i in 1 2 3; do
    s=$(free_port)
    cat >"$SERVICES_DIR/sentinel-$i.conf" <<CONF
port $s
bind 127.0.0.1
daemonize yes
pidfile $SERVICES_DIR/sentinel-$i.pid
logfile $SERVICES_DIR/sentinel-$i.log
dir $SERVICES_DIR
sentinel monitor mymaster 127.0.0.1 $master 2
sentinel down-after-milliseconds mymaster 1000
sentinel failover-timeout mymaster 3000
sentinel parallel-syncs mymaster 1
CONF
    redis-server "$SERVICES_DIR/sentinel-$i.conf" --sentinel
    wait_redis "$s"
    if [ -z "$first" ]; then first=$s; else nodes="$nodes&node=127.0.0.1:$s"; fi
  done
  export REDIS_SENTINEL_URL="redis-sentinel://127.0.0.1:$first/0?sentinelServiceName=mymaster$nodes"
  echo "throwaway Redis Sentinel set: $REDIS_SENTINEL_URL"
}

# A free port P below 55536 with P+10000 free too (a cluster node's bus port).
free_cluster_port() {
  python3 -c '
import random, socket
for _ in range(1000):
    p = random.randint(20000, 45000)
    try:
        for q in (p, p + 10000):
            s = socket.socket(); s.bind(("127.0.0.1", q)); s.close()
        print(p); break
    except OSError:
        pass
'
}

# A three-node Redis Cluster (no replicas), for tests/redis_topologies.rs.
start_cluster() {
  local p ports=() first="" nodes=""
  for i in 1 2 3; do
    p=$(free_cluster_port)
    ports+=("127.0.0.1:$p")
    redis-server --port "$p" --bind 127.0.0.1 --save "" --appendonly no --dir "$SERVICES_DIR" \
      --cluster-enabled yes --cluster-config-file "$SERVICES_DIR/cluster-$i-nodes.conf" \
      --cluster-node-timeout 2000 \
      --daemonize yes --pidfile "$SERVICES_DIR/cluster-$i.pid" --logfile "$SERVICES_DIR/cluster-$i.log"
    wait_redis "$p"
    if [ -z "$first" ]; then first=$p; else nodes="$nodes${nodes:+&}node=127.0.0.1:$p"; fi
  done
  redis-cli --cluster create "${ports[@]}" --cluster-replicas 0 --cluster-yes >/dev/null
  for _ in $(seq 1 100); do
    redis-cli -p "$first" cluster info 2>/dev/null | grep -q 'cluster_state:ok' && break
    sleep 0.1
  done
  export REDIS_CLUSTER_URL="redis-cluster://127.0.0.1:$first?$nodes"
  echo "throwaway Redis Cluster: $REDIS_CLUSTER_URL"
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

step "starting throwaway Redis (single, Sentinel set, Cluster) and PostgreSQL"
start_redis
start_sentinel_set
start_cluster
start_postgres

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings

step "gatehouse check -c gateway.yaml"
cargo build --quiet --bin gatehouse
# As a newcomer runs it (embedded defaults: no Redis), and as a scaled-out deployment does
# (a shared Redis, which needs the second factor's key on every instance).
env -u REDIS_URL -u MFA_ENCRYPTION_KEY "$CARGO_TARGET_DIR/debug/gatehouse" check -c gateway.yaml
MFA_ENCRYPTION_KEY="$(openssl rand -base64 32)" "$CARGO_TARGET_DIR/debug/gatehouse" check -c gateway.yaml

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
