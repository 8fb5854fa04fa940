#!/usr/bin/env bash
# Instructions per request (issue 8): gatehouse under valgrind's callgrind on the harness's
# plain-proxy load, counted after a warm-up, so start-up is not in the figures. Instruction
# counts are exact and repeatable where CPU time is not (the KVM machines this runs on have
# no hardware counters for perf, and their CPU time per request moves ±15 % between rounds).
#
# Starts on 127.0.0.1 only, on free high ports: an nginx `return 200` upstream, a throwaway
# Redis, gatehouse (the harness's config: one thread, access log off) under callgrind; drives
# it with wrk -c10 for WARM seconds, zeroes
# the counters (`callgrind_control -z`), drives it for RUN_SECONDS more, dumps the counters and
# prints user-space instructions per request and the functions that cost most (self, then
# inclusive, per request). Everything started is stopped on exit.
#
# Usage: benches/load/callgrind.sh [PATH]   (PATH: /plain/x; /json, a 1.2 KiB JSON answer;
# /auth/x with a token: AUTH=1;
# RC=1 adds a browser's headers: Accept-Encoding, Accept, Accept-Language, User-Agent, a cookie)
# Knobs: GATEHOUSE_BIN (default: the release binary under CARGO_TARGET_DIR), RUN_SECONDS (10),
# WARM (3), TOP (30), KEEP (a directory to keep the callgrind output in), MEMCPY (1: instead
# of callgrind, run gatehouse with benches/load/memcpy_probe.c preloaded and list the copies of
# over 900 bytes that a new connection making 3 keep-alive requests causes, with their callers
# (a copy seen 3 times is per request, once per connection otherwise): callgrind counts a
# `rep movsb` copy per byte, so its memcpy figure overstates what large copies cost).
# Needs valgrind, nginx-light, wrk, redis-server (installed with apt-get when missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gatehouse/target}"
BIN=${GATEHOUSE_BIN:-$CARGO_TARGET_DIR/release/gatehouse}
URL_PATH=${1:-/plain/x}
SECONDS_RUN=${RUN_SECONDS:-10}
WARM=${WARM:-3}
TOP=${TOP:-30}

for tool in valgrind nginx wrk redis-server curl; do
  command -v "$tool" >/dev/null && continue
  pkg=$tool
  [ "$tool" = nginx ] && pkg=nginx-light
  apt-get install -y "$pkg" >/dev/null
done
[ -x "$BIN" ] || cargo build --release --bin gatehouse

WORK=$(mktemp -d /tmp/gatehouse-callgrind.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$WORK"/callgrind.out.* "$KEEP"/ 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
UP_PORT=$(free_port)
GH_PORT=$(free_port)
REDIS_PORT=$(free_port)

mkdir -p "$WORK/up/tmp" "$WORK/gh"
cat >"$WORK/up/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/up/nginx.pid;
error_log $WORK/up/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $WORK/up/tmp/cb; proxy_temp_path $WORK/up/tmp/p;
  fastcgi_temp_path $WORK/up/tmp/f; uwsgi_temp_path $WORK/up/tmp/u; scgi_temp_path $WORK/up/tmp/s;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$UP_PORT;
    location / { default_type text/plain; return 200 "ok\n"; }
    # The 1.2 KiB JSON of the harness's rc_json scenario (compressed by gatehouse for RC=1).
    location /json { default_type application/json; return 200 '{"patient_id":42,"appointments":[{"id":1000,"patient_id":42,"doctor":{"id":7,"name":"Dra. Lucia Fernandez","specialty":"Cardiologia"},"starts_at":"2026-12-10T09:30:00Z","status":"confirmed","notes":"Control de presion arterial"},{"id":1001,"patient_id":42,"doctor":{"id":7,"name":"Dra. Lucia Fernandez","specialty":"Cardiologia"},"starts_at":"2026-12-11T09:30:00Z","status":"confirmed","notes":"Control de presion arterial"},{"id":1002,"patient_id":42,"doctor":{"id":7,"name":"Dra. Lucia Fernandez","specialty":"Cardiologia"},"starts_at":"2026-12-12T09:30:00Z","status":"confirmed","notes":"Control de presion arterial"},{"id":1003,"patient_id":42,"doctor":{"id":7,"name":"Dra. Lucia Fernandez","specialty":"Cardiologia"},"starts_at":"2026-12-13T09:30:00Z","status":"confirmed","notes":"Control de presion arterial"},{"id":1004,"patient_id":42,"doctor":{"id":7,"name":"Dra. Lucia Fernandez","specialty":"Cardiologia"},"starts_at":"2026-12-14T09:30:00Z","status":"confirmed","notes":"Control de presion arterial"},{"id":1005,"patient_id":42,"doctor":{"id":7,"name":"Dra. Lucia Fernandez","specialty":"Cardiologia"},"starts_at":"2026-12-15T09:30:00Z","status":"confirmed","notes":"Control de presion arterial"}]}'; }
  }
}
EOF
nginx -p "$WORK/up" -e "$WORK/up/error.log" -c "$WORK/up/nginx.conf" &
PIDS+=($!)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" \
  --logfile "$WORK/redis.log" &
PIDS+=($!)

cat >"$WORK/gh/gateway.yaml" <<EOF
server:
  listen: 127.0.0.1:$GH_PORT
  admin_listen: null
  threads: 1
  upgrade_sock: $WORK/gh/upgrade.sock
  pid_file: $WORK/gh/gatehouse.pid
  limits: {keepalive_timeout: 60s, keepalive_requests: 1000, write_buffer: 1460B}
  log: {level: warn, format: text, access_log: false}
auth:
  database_url: sqlite://$WORK/gh/users.db
  migrate_on_start: true
  redis_url: redis://127.0.0.1:$REDIS_PORT/0
  jwt: {algorithm: HS256, secret: "callgrind-secret-0123456789-abcdefghijklmnopqrst"}
  sessions: {access_ttl: 1h}
upstreams:
  backend:
    backends: http://127.0.0.1:$UP_PORT
routes:
  - {name: plain, prefix: /plain, upstream: backend}
  - {name: auth, prefix: /auth, upstream: backend, auth: required}
  - {name: json, prefix: /json, upstream: backend}
EOF
for _ in $(seq 1 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
HEADER=()
if [ "${AUTH:-0}" = 1 ]; then
  echo 'valgrind counts instructions 42' | DATABASE_URL="sqlite://$WORK/gh/users.db" \
    "$BIN" user add --email cg@example.com --role patient --name Callgrind >/dev/null
fi

if [ "${MEMCPY:-0}" = 1 ]; then
  gcc -O2 -shared -fPIC -o "$WORK/memcpy_probe.so" "$REPO/benches/load/memcpy_probe.c" -ldl
  LD_PRELOAD="$WORK/memcpy_probe.so" "$BIN" run -c "$WORK/gh/gateway.yaml" >"$WORK/gh/out.log" 2>&1 &
else
  valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out.%p" --dump-instr=no \
    "$BIN" run -c "$WORK/gh/gateway.yaml" >"$WORK/gh/out.log" 2>&1 &
fi
VG=$!
PIDS+=("$VG")
for _ in $(seq 1 300); do
  curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$GH_PORT/health" && break
  sleep 0.2
done
if [ "${AUTH:-0}" = 1 ]; then
  TOKEN=$(curl -s --max-time 20 -X POST -H 'Content-Type: application/json' \
    -d '{"email":"cg@example.com","password":"valgrind counts instructions 42"}' \
    "http://127.0.0.1:$GH_PORT/api/v1/auth/login" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
  HEADER=(-H "Authorization: Bearer $TOKEN")
fi
# RC=1: what a browser sends besides the URL (the harness's rc_* scenarios).
if [ "${RC:-0}" = 1 ]; then
  HEADER+=(
    -H "Accept: application/json, text/plain, */*"
    -H "Accept-Encoding: gzip, deflate, br"
    -H "Accept-Language: es-ES,es;q=0.9,en;q=0.8"
    -H "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
    -H "Cookie: theme=dark; _ga=GA1.2.1234567890.1733500000"
  )
fi
if [ "${MEMCPY:-0}" = 1 ]; then
  U="http://127.0.0.1:$GH_PORT$URL_PATH"
  # Two requests first (first-use allocations), then a new connection with three requests:
  # a copy seen 3 times is made per request, the others per connection (task spawn and end).
  curl -s -o /dev/null -o /dev/null "${HEADER[@]}" "$U" "$U"
  sleep 0.5
  START=$(wc -l <"$WORK/gh/out.log")
  curl -s -o /dev/null -o /dev/null -o /dev/null "${HEADER[@]}" "$U" "$U" "$U"
  sleep 0.5
  echo "gatehouse $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?'), $URL_PATH: copies over 900 bytes, one connection, 3 requests (count, bytes, caller)"
  tail -n +$((START + 1)) "$WORK/gh/out.log" | awk '/^MEMCPY/ {print $2, $3, $4}' | sort | uniq -c |
    sort -k2,2nr | while read -r n size obj off; do
      where=$(addr2line -f -C -e "$obj" "$(printf '0x%x' $((off - 1)))" 2>/dev/null | head -1)
      printf '%3d × %6d B  %s\n' "$n" "$size" "${where:0:160}"
    done
  exit 0
fi
wrk -t1 -c10 -d"${WARM}s" "${HEADER[@]}" "http://127.0.0.1:$GH_PORT$URL_PATH" >/dev/null
callgrind_control -z "$VG" >/dev/null
wrk -t1 -c10 -d"${SECONDS_RUN}s" "${HEADER[@]}" "http://127.0.0.1:$GH_PORT$URL_PATH" >"$WORK/wrk.out"
callgrind_control -d "$VG" >/dev/null
REQUESTS=$(awk '/requests in/ {print $1}' "$WORK/wrk.out")
OUT=$(ls -t "$WORK"/callgrind.out.*.1 | head -1)
echo "gatehouse $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?'), $URL_PATH: $REQUESTS requests counted"
python3 "$REPO/benches/load/callgrind_report.py" "$OUT" "$REQUESTS" "$TOP"
