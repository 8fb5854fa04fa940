#!/usr/bin/env bash
# Chaos soak (issue 25): ~10 minutes of mixed realistic load — browsers signing in, viewing
# their dashboard and fetching assets, API clients with bearer tokens, logouts — through two
# gateways (the shipped gateway.yaml) on a Redis Sentinel set (master, replica, three
# sentinels) and PostgreSQL, while a schedule injects faults: the Redis master killed,
# PostgreSQL restarted, an upstream killed and brought back, an upstream answering 500s and
# then slowly, a hot reload every 30 s (one with a broken file), a zero-downtime binary upgrade
# of one instance. Not part of `cargo test`.
#
# It reports per phase the requests by outcome, the failures the gateway caused (not the
# upstreams' own answers), the time to sign-in after each store fault, RSS and open fds over
# time and sessions lost, in OUT_DIR:
#   DATE-MACHINE-chaos.md     the report (targets, phases, memory; machine and versions)
#   DATE-MACHINE-chaos.png    the chart (requests/s by outcome, RSS, fault marks)
#   DATE-MACHINE-chaos.json   every figure and sample
# Everything runs on 127.0.0.1 on free ports, is bounded in time, and is stopped on exit.
#
# Knobs (environment): DURATION (600 s; the schedule scales with it), BROWSERS (4),
# API_CLIENTS (4), GATEHOUSE_BIN (a binary to use instead of a release build), OUT_DIR
# (benches/results), BENCH_MACHINE. Needs redis-server, redis-cli and PostgreSQL's
# binaries (installed with apt-get when missing, as scripts/test.sh does) and, for the chart,
# matplotlib (pip).
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gatehouse/target}"
DURATION=${DURATION:-600}
BROWSERS=${BROWSERS:-4}
API_CLIENTS=${API_CLIENTS:-4}
OUT_DIR=${OUT_DIR:-$REPO/benches/results}
MACHINE=${BENCH_MACHINE:-$(hostname -s)-$(nproc)cpu}
DATE=$(date +%F)

step() { printf '\n==> %s\n' "$*"; }

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-cli >/dev/null || missing+=(redis-tools)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  step "apt-get install ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -q && $SUDO apt-get install -y -q "${missing[@]}"
fi
if ! python3 -c 'import matplotlib' 2>/dev/null; then
  step "pip install matplotlib (for the chart)"
  python3 -m pip install -q matplotlib || echo "no matplotlib: the report comes without a chart"
fi

if [ -n "${GATEHOUSE_BIN:-}" ]; then
  BIN=$GATEHOUSE_BIN
else
  step "cargo build --release"
  cargo build --release --quiet --bin gatehouse
  BIN=$CARGO_TARGET_DIR/release/gatehouse
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-chaos.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT_DIR"
step "soak: $DURATION s (work dir $WORK)"
python3 benches/chaos/chaos.py run --bin "$BIN" --repo "$REPO" --work "$WORK" \
  --out "$OUT_DIR/$DATE-$MACHINE-chaos" --duration "$DURATION" \
  --browsers "$BROWSERS" --api-clients "$API_CLIENTS"
