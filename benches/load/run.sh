#!/usr/bin/env bash
# Load harness (issue 8): gatehouse against nginx configured as the equivalent reverse proxy.
#
# Builds gatehouse in release mode, starts on 127.0.0.1 only, on free high ports:
#   - a fast upstream: nginx `return 200` (1 worker),              pinned to core LOAD_CPU
#   - a throwaway Redis (live sessions of the auth scenario),      pinned to core LOAD_CPU
#   - gatehouse (server.threads: 1, access log off, log.level warn), pinned to core PROXY_CPU
#   - nginx as the equivalent reverse proxy (1 worker),            pinned to core PROXY_CPU
#   - (PINGORA_FLOOR=1) Pingora's proxy alone, examples/bare_pingora.rs with the same
#     forwarding headers,                                          pinned to core PROXY_CPU
#   - (ENGINE_FLOOR=1) an HTTP/1 proxy engine of nginx's shape on Tokio,
#     examples/tokio_http1.rs, the same forwarding headers,       pinned to core PROXY_CPU
# and runs the same wrk load (pinned to core LOAD_CPU) against both proxies, interleaved in
# rounds, after waiting (bounded) for an idle machine before each round; bare Pingora and the
# Tokio engine run the plain scenario only, as floors under gatehouse. For each scenario it
# records requests/s, p50/p99 latency and the proxy's CPU time per request (utime+stime from
# /proc/PID/stat), then the RSS growth per idle keep-alive connection with IDLE_CONNECTIONS
# open, then (PROFILE=1) a perf profile of gatehouse. It writes, in OUT_DIR:
#   DATE-MACHINE.md       the report (tables, targets, machine and versions)
#   DATE-MACHINE.png      the chart
#   DATE-MACHINE.json     every raw number (rounds, idle memory, machine)
#   DATE-MACHINE-*.txt    response headers of each scenario, perf profile
# Everything it starts is stopped on exit. Every load loop is bounded in time.
#
# Knobs (environment): ROUNDS (3), ROUND_SECONDS (5), CONNECTIONS (50), FIXED_RATE (10000),
# FIXED_CONNECTIONS (100), IDLE_CONNECTIONS (10000), IDLE_WAIT_MAX (10 s per round),
# IDLE_BUSY_PCT (10), PROXY_CPU (0), LOAD_CPU (1), PROFILE (1), ALLOCS (0: 1 counts heap
# allocations per request with libc uprobes, see below), BENCH_MACHINE, OUT_DIR,
# SCENARIOS (space-separated subset), GATEHOUSE_BIN (a binary to use instead of building),
# WORK_STEALING (true: gatehouse's server.work_stealing), WRITE_BUFFER (1460B: its
# server.limits.write_buffer), PINGORA_FLOOR (1: also measure bare Pingora on the plain
# scenario), PINGORA_BIN (a bare_pingora binary to use instead of building it), ENGINE_FLOOR
# (1: also measure the Tokio engine on the plain scenario), ENGINE_BIN (a tokio_http1 binary).
# Needs root or enough `ulimit -n` for IDLE_CONNECTIONS; installs nginx-light, wrk,
# redis-server, curl and linux-perf with apt-get and matplotlib with pip when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd)
LOAD_DIR=$REPO/benches/load
export GATEHOUSE_LOAD_DIR=$LOAD_DIR
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gatehouse/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

ROUNDS=${ROUNDS:-3}
ROUND_SECONDS=${ROUND_SECONDS:-5}
CONNECTIONS=${CONNECTIONS:-50}
FIXED_RATE=${FIXED_RATE:-10000}
FIXED_CONNECTIONS=${FIXED_CONNECTIONS:-100}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-10000}
IDLE_WAIT_MAX=${IDLE_WAIT_MAX:-10}
IDLE_BUSY_PCT=${IDLE_BUSY_PCT:-10}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
PROFILE=${PROFILE:-1}
PINGORA_FLOOR=${PINGORA_FLOOR:-1}
ENGINE_FLOOR=${ENGINE_FLOOR:-1}
SCENARIOS=${SCENARIOS:-plain auth noauth_401 not_found_404 landing asset fixed_rate rc_plain rc_auth rc_json rc_fixed_rate}
MACHINE=${BENCH_MACHINE:-$(hostname -s)-$(nproc)cpu}
OUT_DIR=${OUT_DIR:-$REPO/benches/results}
DATE=$(date +%F)
STEM=$OUT_DIR/$DATE-$MACHINE
mkdir -p "$OUT_DIR"
CLK_TCK=$(getconf CLK_TCK)

step() { printf '\n==> %s\n' "$*" >&2; }
log() { printf '    %s\n' "$*" >&2; }

# --- tools ---------------------------------------------------------------------------------
missing=()
command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v ss >/dev/null 2>&1 || missing+=(iproute2)
# zlib-ng (flate2's backend) builds with cmake when gatehouse is built here.
if [ -z "${GATEHOUSE_BIN:-}" ] && ! command -v cmake >/dev/null 2>&1; then missing+=(cmake); fi
if [ "$PROFILE" = 1 ] && ! command -v perf >/dev/null 2>&1; then missing+=(linux-perf); fi
if ((${#missing[@]} > 0)); then
  step "apt-get install ${missing[*]}"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if ! python3 -c 'import matplotlib' 2>/dev/null; then
  step "pip install matplotlib"
  python3 -m pip install -q matplotlib
fi

# Enough descriptors for the idle connections (client and proxy both inherit this).
hard=$(ulimit -Hn)
if [ "$hard" = unlimited ]; then hard=65536; fi
ulimit -n "$hard"
if ((hard < IDLE_CONNECTIONS + 1000)); then
  IDLE_CONNECTIONS=$((hard - 1000))
  log "ulimit -n is $hard: IDLE_CONNECTIONS lowered to $IDLE_CONNECTIONS"
fi

# --- build ---------------------------------------------------------------------------------
targets=()
[ -n "${GATEHOUSE_BIN:-}" ] || targets+=(--bin gatehouse)
[ "$PINGORA_FLOOR" != 1 ] || [ -n "${PINGORA_BIN:-}" ] || targets+=(--example bare_pingora)
[ "$ENGINE_FLOOR" != 1 ] || [ -n "${ENGINE_BIN:-}" ] || targets+=(--example tokio_http1)
if ((${#targets[@]} > 0)); then
  step "cargo build --release ${targets[*]}"
  cargo build --release "${targets[@]}"
fi
# The source state that was built (other work may change the tree during the run).
BUILT_COMMIT=$(git rev-parse HEAD)
BUILT_DIRTY=$(git status --porcelain -- src Cargo.toml Cargo.lock | wc -l)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-load.XXXXXX")
chmod 755 "$WORK" # nginx workers run as an unprivileged user when started as root
# A private copy, so a later build in the shared target dir cannot swap it mid-run.
BIN=$WORK/gatehouse
cp "${GATEHOUSE_BIN:-$CARGO_TARGET_DIR/release/gatehouse}" "$BIN"
BARE_BIN=$WORK/bare_pingora
if [ "$PINGORA_FLOOR" = 1 ]; then
  cp "${PINGORA_BIN:-$CARGO_TARGET_DIR/release/examples/bare_pingora}" "$BARE_BIN"
fi
ENGINE_COPY=$WORK/tokio_http1
if [ "$ENGINE_FLOOR" = 1 ]; then
  cp "${ENGINE_BIN:-$CARGO_TARGET_DIR/release/examples/tokio_http1}" "$ENGINE_COPY"
fi

PIDS=()
cleanup() {
  local pid
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    pid=${PIDS[i]}
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [ -n "${KEEP_WORK:-}" ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

wait_http() { # URL: up to 10 s for any HTTP answer
  for _ in $(seq 1 100); do
    curl -s -o /dev/null --max-time 1 "$1" && return 0
    sleep 0.1
  done
  echo "no answer from $1" >&2
  return 1
}

# --- upstream, Redis -----------------------------------------------------------------------
UP_PORT=$(free_port)
GH_PORT=$(free_port)
NGX_PORT=$(free_port)
PG_PORT=$(free_port)
ENG_PORT=$(free_port)
REDIS_PORT=$(free_port)

step "upstream nginx on 127.0.0.1:$UP_PORT, Redis on 127.0.0.1:$REDIS_PORT (core $LOAD_CPU)"
mkdir -p "$WORK/upstream/tmp" "$WORK/proxy/tmp" "$WORK/www" "$WORK/gh"
temp_paths() { # DIR: nginx temp directories inside DIR
  for t in client_body proxy fastcgi uwsgi scgi; do echo "  ${t}_temp_path $1/tmp/$t;"; done
}
cat >"$WORK/upstream/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/upstream/nginx.pid;
error_log $WORK/upstream/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
$(temp_paths "$WORK/upstream")
  keepalive_timeout 75s;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$UP_PORT;
    location / { default_type text/plain; return 200 "ok\n"; }
    # A ~1.2 KiB JSON answer, as a patients service gives (the real-client scenarios).
    location /json { default_type application/json; return 200 '{"patient_id":42,"appointments":[{"id":1000,"patient_id":42,"doctor":{"id":7,"name":"Dra. Lucia Fernandez","specialty":"Cardiologia"},"starts_at":"2026-12-10T09:30:00Z","status":"confirmed","notes":"Control de presion arterial"},{"id":1001,"patient_id":42,"doctor":{"id":7,"name":"Dra. Lucia Fernandez","specialty":"Cardiologia"},"starts_at":"2026-12-11T09:30:00Z","status":"confirmed","notes":"Control de presion arterial"},{"id":1002,"patient_id":42,"doctor":{"id":7,"name":"Dra. Lucia Fernandez","specialty":"Cardiologia"},"starts_at":"2026-12-12T09:30:00Z","status":"confirmed","notes":"Control de presion arterial"},{"id":1003,"patient_id":42,"doctor":{"id":7,"name":"Dra. Lucia Fernandez","specialty":"Cardiologia"},"starts_at":"2026-12-13T09:30:00Z","status":"confirmed","notes":"Control de presion arterial"},{"id":1004,"patient_id":42,"doctor":{"id":7,"name":"Dra. Lucia Fernandez","specialty":"Cardiologia"},"starts_at":"2026-12-14T09:30:00Z","status":"confirmed","notes":"Control de presion arterial"},{"id":1005,"patient_id":42,"doctor":{"id":7,"name":"Dra. Lucia Fernandez","specialty":"Cardiologia"},"starts_at":"2026-12-15T09:30:00Z","status":"confirmed","notes":"Control de presion arterial"}]}'; }
  }
}
EOF
taskset -c "$LOAD_CPU" nginx -p "$WORK/upstream" -e "$WORK/upstream/error.log" -c "$WORK/upstream/nginx.conf" &
PIDS+=($!)
taskset -c "$LOAD_CPU" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$WORK" --logfile "$WORK/redis.log" &
PIDS+=($!)
wait_http "http://127.0.0.1:$UP_PORT/"
for _ in $(seq 1 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

# --- gatehouse -----------------------------------------------------------------------------
step "gatehouse on 127.0.0.1:$GH_PORT (core $PROXY_CPU)"
cat >"$WORK/gh/gateway.yaml" <<EOF
# Written by benches/load/run.sh.
server:
  listen: 127.0.0.1:$GH_PORT
  admin_listen: null
  threads: 1
  work_stealing: ${WORK_STEALING:-true}
  upgrade_sock: $WORK/gh/upgrade.sock
  pid_file: $WORK/gh/gatehouse.pid
  limits: {keepalive_timeout: 60s, keepalive_requests: 1000, write_buffer: ${WRITE_BUFFER:-1460B}}
  log: {level: warn, format: text, access_log: false}
auth:
  database_url: sqlite://$WORK/gh/users.db
  migrate_on_start: true
  redis_url: redis://127.0.0.1:$REDIS_PORT/0
  jwt: {algorithm: HS256, secret: "load-harness-secret-0123456789-abcdefghijklmnop"}
  # Long enough that no token is renewed (a store write) during the run.
  sessions: {access_ttl: 1h}
upstreams:
  backend:
    backends: http://127.0.0.1:$UP_PORT
routes:
  - {name: plain, prefix: /plain, upstream: backend}
  - {name: json, prefix: /json, upstream: backend}
  - {name: auth, prefix: /auth, upstream: backend, auth: required}
web:
  templates: $REPO/templates
  assets: $REPO/assets
  pages:
    - {path: /, template: landing.html, title: Inicio}
    - {path: /login, template: login.html, title: Iniciar sesión}
EOF
"$BIN" check -c "$WORK/gh/gateway.yaml" >&2
BENCH_EMAIL=bench@example.com
BENCH_PASSWORD='load harness password 42'
echo "$BENCH_PASSWORD" | DATABASE_URL="sqlite://$WORK/gh/users.db" \
  "$BIN" user add --email "$BENCH_EMAIL" --role patient --name Bench >&2
taskset -c "$PROXY_CPU" "$BIN" run -c "$WORK/gh/gateway.yaml" >"$WORK/gh/out.log" 2>&1 &
GH_PID=$!
PIDS+=("$GH_PID")
wait_http "http://127.0.0.1:$GH_PORT/health"
TOKEN=$(curl -s --max-time 5 -X POST -H 'Content-Type: application/json' \
  -d "{\"email\":\"$BENCH_EMAIL\",\"password\":\"$BENCH_PASSWORD\"}" \
  "http://127.0.0.1:$GH_PORT/api/v1/auth/login" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
log "signed in $BENCH_EMAIL (token ${#TOKEN} bytes, session in Redis)"

# The landing page as gatehouse renders it, for nginx to serve as a static file.
curl -s --max-time 5 -o "$WORK/www/landing.html" "http://127.0.0.1:$GH_PORT/"

# --- nginx as the equivalent reverse proxy -------------------------------------------------
step "nginx reverse proxy on 127.0.0.1:$NGX_PORT (core $PROXY_CPU)"
# The headers gatehouse puts on HTML answers, so both send the same bytes.
CSP=$(curl -s --max-time 5 -D - -o /dev/null "http://127.0.0.1:$GH_PORT/" |
  sed -n 's/^[Cc]ontent-[Ss]ecurity-[Pp]olicy: *//p' | tr -d '\r')
cat >"$WORK/proxy/nginx.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile $hard;
daemon off;
pid $WORK/proxy/nginx.pid;
error_log $WORK/proxy/error.log warn;
events { worker_connections $((IDLE_CONNECTIONS + 2000)); }
http {
  access_log off;
  server_tokens off;
$(temp_paths "$WORK/proxy")
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_timeout 60s;
  keepalive_requests 1000;
  types { text/html html; text/css css; application/javascript js; image/svg+xml svg; }
  default_type application/octet-stream;

  upstream backend {
    server 127.0.0.1:$UP_PORT;
    keepalive 64;
  }
  # Keep a client's request id, else make one (as gatehouse does).
  map \$http_x_request_id \$req_id { "" \$request_id; default \$http_x_request_id; }
  map \$http_authorization \$no_token { "" 1; default 0; }

  server {
    listen 127.0.0.1:$NGX_PORT;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host \$http_host;
    proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    proxy_set_header X-Real-IP \$remote_addr;
    proxy_set_header X-Forwarded-Proto \$scheme;
    proxy_set_header X-Forwarded-Host \$host;
    proxy_set_header X-Request-Id \$req_id;
    add_header X-Request-Id \$req_id always;

    location /plain { proxy_pass http://backend; }
    # The same compression gatehouse applies (server.compression: gzip level 6 from 1 KiB).
    location /json {
      proxy_pass http://backend;
      gzip on;
      gzip_types application/json;
      gzip_min_length 1024;
      gzip_comp_level 6;
      gzip_proxied any;
      gzip_vary on;
    }
    # nginx has no JWT: /auth with a token is the plain proxy; without one, the 401 answer.
    location /auth {
      default_type application/json;
      if (\$no_token) {
        add_header X-Request-Id \$req_id always;
        add_header WWW-Authenticate 'Bearer realm="gatehouse"' always;
        return 401 '{"error":{"status":401,"code":"unauthorized","message":"authentication required","request_id":"\$req_id"}}';
      }
      proxy_pass http://backend;
    }
    # Not rendered: the landing page as gatehouse rendered it once, served as a file.
    location = / {
      root $WORK/www;
      try_files /landing.html =404;
      add_header X-Request-Id \$req_id always;
      add_header Content-Security-Policy "$CSP" always;
      add_header X-Content-Type-Options nosniff always;
      add_header Referrer-Policy strict-origin-when-cross-origin always;
      add_header X-Frame-Options DENY always;
    }
    location /assets/ {
      alias $REPO/assets/;
      add_header X-Request-Id \$req_id always;
      add_header Cache-Control "public, max-age=3600" always;
    }
    location / {
      default_type application/json;
      return 404 '{"error":{"status":404,"code":"not_found","message":"no route for this path","request_id":"\$req_id"}}';
    }
  }
}
EOF
nginx -t -q -p "$WORK/proxy" -e "$WORK/proxy/error.log" -c "$WORK/proxy/nginx.conf"
taskset -c "$PROXY_CPU" nginx -p "$WORK/proxy" -e "$WORK/proxy/error.log" -c "$WORK/proxy/nginx.conf" &
NGX_PID=$!
PIDS+=("$NGX_PID")
wait_http "http://127.0.0.1:$NGX_PORT/plain"

# --- bare Pingora: the floor under gatehouse -----------------------------------------------
PG_PID=
if [ "$PINGORA_FLOOR" = 1 ]; then
  step "bare Pingora (examples/bare_pingora.rs, forwarding headers) on 127.0.0.1:$PG_PORT (core $PROXY_CPU)"
  taskset -c "$PROXY_CPU" "$BARE_BIN" "127.0.0.1:$PG_PORT" "127.0.0.1:$UP_PORT" headers \
    >"$WORK/bare_pingora.log" 2>&1 &
  PG_PID=$!
  PIDS+=("$PG_PID")
  wait_http "http://127.0.0.1:$PG_PORT/plain"
fi

# --- a Tokio HTTP/1 engine of nginx's shape: what an own engine would cost -------------------
ENG_PID=
if [ "$ENGINE_FLOOR" = 1 ]; then
  step "Tokio HTTP/1 engine (examples/tokio_http1.rs) on 127.0.0.1:$ENG_PORT (core $PROXY_CPU)"
  taskset -c "$PROXY_CPU" "$ENGINE_COPY" "127.0.0.1:$ENG_PORT" "127.0.0.1:$UP_PORT" \
    >"$WORK/tokio_http1.log" 2>&1 &
  ENG_PID=$!
  PIDS+=("$ENG_PID")
  wait_http "http://127.0.0.1:$ENG_PORT/plain"
fi

proxy_pids() { # PROXY: every process of that proxy (nginx: master and workers)
  case $1 in
    gatehouse) echo "$GH_PID" ;;
    pingora) echo "$PG_PID" ;;
    engine) echo "$ENG_PID" ;;
    *) echo "$NGX_PID" $(pgrep -P "$NGX_PID") ;;
  esac
}
proxy_port() {
  case $1 in
    gatehouse) echo "$GH_PORT" ;;
    pingora) echo "$PG_PORT" ;;
    engine) echo "$ENG_PORT" ;;
    *) echo "$NGX_PORT" ;;
  esac
}
proxies_for() { # SCENARIO: the proxies that run it (the floors only proxy: plain)
  local ps="gatehouse nginx"
  if [ "$1" = plain ]; then
    if [ "$PINGORA_FLOOR" = 1 ]; then ps+=" pingora"; fi
    if [ "$ENGINE_FLOOR" = 1 ]; then ps+=" engine"; fi
  fi
  echo "$ps"
}
cpu_ticks() { # PIDS...: "total kernel" ticks of those processes (utime+stime, and stime alone)
  local total=0 kernel=0 u k
  for p in "$@"; do
    # Fields after "(comm) ": state is $1, utime $12, stime $13 (clock ticks).
    read -r u k < <(sed 's/^.*) //' "/proc/$p/stat" | awk '{print $12, $13}')
    total=$((total + u + k))
    kernel=$((kernel + k))
  done
  echo "$total $kernel"
}
rss_kib() { # PIDS...: summed VmRSS in KiB
  local total=0 r
  for p in "$@"; do
    r=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status")
    total=$((total + r))
  done
  echo "$total"
}
core_ticks() { # CPU: "busy total" ticks of that core from /proc/stat
  awk -v c="cpu$1" '$1 == c {t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t}' /proc/stat
}
machine_busy_pct() { # the whole machine's busy share over one second
  local a b
  a=$(awk '$1 == "cpu" {t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t}' /proc/stat)
  sleep 1
  b=$(awk '$1 == "cpu" {t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t}' /proc/stat)
  echo "$a $b" | awk '{d = $4 - $2; printf "%.1f", (d > 0 ? 100 * ($3 - $1) / d : 0)}'
}
IDLE_WAITED=0
IDLE_BUSY=0
wait_idle() { # up to IDLE_WAIT_MAX s for the machine to be idle (busy < IDLE_BUSY_PCT over 1 s)
  local start=$SECONDS
  while :; do
    IDLE_BUSY=$(machine_busy_pct)
    if awk -v b="$IDLE_BUSY" -v m="$IDLE_BUSY_PCT" 'BEGIN {exit !(b < m)}'; then break; fi
    if ((SECONDS - start >= IDLE_WAIT_MAX)); then break; fi
  done
  IDLE_WAITED=$((SECONDS - start))
}

# --- scenarios -----------------------------------------------------------------------------
# name | path | Authorization header (1: the bench token) | expected status
scenario_path() {
  case $1 in
    plain | fixed_rate | rc_plain | rc_fixed_rate) echo /plain ;;
    auth | noauth_401 | rc_auth) echo /auth ;;
    rc_json) echo /json ;;
    not_found_404) echo /nothing/here ;;
    landing) echo / ;;
    asset) echo /assets/css/site.css ;;
  esac
}
scenario_status() {
  case $1 in noauth_401) echo 401 ;; not_found_404) echo 404 ;; *) echo 200 ;; esac
}
# What a browser's or an API client's request carries besides the URL (rc_* scenarios): the
# negotiation headers, a user agent and a cookie of the site's own (not gatehouse's).
RC_HEADERS=(
  -H "Accept: application/json, text/plain, */*"
  -H "Accept-Encoding: gzip, deflate, br"
  -H "Accept-Language: es-ES,es;q=0.9,en;q=0.8"
  -H "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
  -H "Cookie: theme=dark; _ga=GA1.2.1234567890.1733500000"
)
scenario_headers() { # SCENARIO: the request headers (one per line, as curl/wrk arguments)
  case $1 in rc_*) printf '%s\n' "${RC_HEADERS[@]}" ;; esac
  case $1 in auth | rc_auth) printf '%s\n' -H "Authorization: Bearer $TOKEN" ;; esac
}
wrk_args() { # PROXY SCENARIO SECONDS: the wrk command line (without wrk itself)
  local url="http://127.0.0.1:$(proxy_port "$1")$(scenario_path "$2")"
  local args=(-t1 --timeout 2s -d "${3}s")
  local hdr
  mapfile -t hdr < <(scenario_headers "$2")
  args+=("${hdr[@]}")
  if [ "$2" = fixed_rate ] || [ "$2" = rc_fixed_rate ]; then
    args+=(-c "$FIXED_CONNECTIONS" -s "$LOAD_DIR/paced.lua" "$url" -- "$FIXED_RATE" "$FIXED_CONNECTIONS")
  else
    args+=(-c "$CONNECTIONS" -s "$LOAD_DIR/stats.lua" "$url")
  fi
  printf '%s\n' "${args[@]}"
}

step "checking every scenario on every proxy"
: >"$STEM-responses.txt"
for s in $SCENARIOS; do
  for p in $(proxies_for "$s"); do
    url="http://127.0.0.1:$(proxy_port $p)$(scenario_path "$s")"
    mapfile -t hdr < <(scenario_headers "$s")
    code=$(curl -s --max-time 5 "${hdr[@]}" -D "$WORK/headers" -o "$WORK/body" -w '%{http_code}' "$url")
    {
      echo "### $s — $p: GET $(scenario_path "$s") → $code, $(wc -c <"$WORK/body") body bytes"
      tr -d '\r' <"$WORK/headers" | sed -E 's/^(Set-Cookie: [^=]*=)[^;]*/\1…/I'
    } >>"$STEM-responses.txt"
    if [ "$code" != "$(scenario_status "$s")" ]; then
      echo "$p $s: expected $(scenario_status "$s"), got $code" >&2
      cat "$WORK/body" >&2
      exit 1
    fi
  done
done
log "response headers: $STEM-responses.txt"

step "warm-up (1 s per scenario and proxy, not recorded)"
for s in $SCENARIOS; do
  for p in $(proxies_for "$s"); do
    mapfile -t args < <(wrk_args "$p" "$s" 1)
    taskset -c "$LOAD_CPU" wrk "${args[@]}" >/dev/null
  done
done

ROUNDS_CSV=$WORK/rounds.csv
echo "proxy,scenario,round,requests,duration_us,p50_us,p90_us,p99_us,max_us,mean_us,err_socket,non2xx3xx,cpu_ticks,clk_tck,core_busy_ticks,core_total_ticks,load1,busy_before_pct,idle_wait_s,started,redis_commands,sys_ticks" >"$ROUNDS_CSV"
redis_commands() { redis-cli -p "$REDIS_PORT" info stats | tr -d '\r' | awk -F: '$1 == "total_commands_processed" {print $2}'; }
run_round() { # PROXY SCENARIO ROUND
  local p=$1 s=$2 r=$3 pids c0 c1 s0 s1 k0 k1 out json load1 started
  read -r -a pids <<<"$(proxy_pids "$p")"
  wait_idle
  load1=$(cut -d' ' -f1 /proc/loadavg)
  started=$(date -u +%H:%M:%S)
  mapfile -t args < <(wrk_args "$p" "$s" "$ROUND_SECONDS")
  rc0=$(redis_commands)
  read -r c0 s0 <<<"$(cpu_ticks "${pids[@]}")"
  read -r k0b k0t <<<"$(core_ticks "$PROXY_CPU")"
  out=$(taskset -c "$LOAD_CPU" wrk "${args[@]}")
  read -r c1 s1 <<<"$(cpu_ticks "${pids[@]}")"
  read -r k1b k1t <<<"$(core_ticks "$PROXY_CPU")"
  rc1=$(redis_commands)
  json=$(sed -n 's/^WRKJSON //p' <<<"$out")
  python3 - "$json" "$p" "$s" "$r" "$((c1 - c0))" "$CLK_TCK" "$((k1b - k0b))" "$((k1t - k0t))" \
    "$load1" "$IDLE_BUSY" "$IDLE_WAITED" "$started" "$((rc1 - rc0 - 1))" "$((s1 - s0))" >>"$ROUNDS_CSV" <<'PY'
import json, sys
j = json.loads(sys.argv[1])
p, s, r, ticks, tck, kb, kt, load1, busy, waited, started, redis, sys_ticks = sys.argv[2:]
sock = j["err_connect"] + j["err_read"] + j["err_write"] + j["err_timeout"]
print(",".join(str(x) for x in [p, s, r, j["requests"], j["duration_us"], j["p50_us"], j["p90_us"],
      j["p99_us"], j["max_us"], j["mean_us"], sock, j["err_status"], ticks, tck, kb, kt, load1,
      busy, waited, started, redis, sys_ticks]))
PY
  tail -n 1 "$ROUNDS_CSV" | awk -F, '{printf "    %-9s %-14s round %s: %8.0f req/s  p50 %5d us  p99 %6d us  cpu %5.1f us/req  (load %s, busy before %s%%, waited %ss)\n",
    $1, $2, $3, $4 / ($5 / 1e6), $6, $8, $13 * 1e6 / $14 / ($4 > 0 ? $4 : 1), $17, $18, $19}' >&2
}

step "$ROUNDS rounds of ${ROUND_SECONDS}s per scenario and proxy, interleaved"
for r in $(seq 1 "$ROUNDS"); do
  for s in $SCENARIOS; do
    order=$(proxies_for "$s")
    if ! ((r % 2)); then order=$(tr ' ' '\n' <<<"$order" | tac | tr '\n' ' '); fi
    for p in $order; do run_round "$p" "$s" "$r"; done
  done
done

# --- idle keep-alive connections -----------------------------------------------------------
IDLE_CSV=$WORK/idle.csv
echo "proxy,connections_requested,connections_open,rss_before_kib,rss_open_kib,rss_after_close_kib" >"$IDLE_CSV"
step "idle memory: $IDLE_CONNECTIONS keep-alive connections, one request each (GET /nothing/here)"
for p in gatehouse nginx; do
  read -r -a pids <<<"$(proxy_pids "$p")"
  port=$(proxy_port "$p")
  wait_idle
  before=$(rss_kib "${pids[@]}")
  taskset -c "$LOAD_CPU" python3 "$LOAD_DIR/idle_conns.py" 127.0.0.1 "$port" /nothing/here \
    "$IDLE_CONNECTIONS" 120 >"$WORK/idle-$p.log" &
  client=$!
  PIDS+=("$client")
  for _ in $(seq 1 900); do grep -q READY "$WORK/idle-$p.log" && break; sleep 0.1; done
  sleep 2
  open=$(ss -Htn state established "( sport = :$port )" | wc -l)
  during=$(rss_kib "${pids[@]}")
  kill -USR1 "$client" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$client" 2>/dev/null || break; sleep 0.1; done
  sleep 2
  after=$(rss_kib "${pids[@]}")
  echo "$p,$IDLE_CONNECTIONS,$open,$before,$during,$after" >>"$IDLE_CSV"
  log "$p: $open open, VmRSS $before → $during KiB ($(( (during - before) * 1024 / (open > 0 ? open : 1) )) B per connection), $after KiB after closing"
done

# --- profile -------------------------------------------------------------------------------
PROFILE_TXT=$STEM-profile.txt
set +o pipefail # `perf report | head` may end perf with SIGPIPE
if [ "$PROFILE" = 1 ] && command -v perf >/dev/null 2>&1; then
  step "profiling (perf) during a plain-proxy and an auth round"
  {
    echo "# perf profiles, $(date -u +%FT%TZ), gatehouse $(git rev-parse --short HEAD)"
    echo "# wrk -t1 -c$CONNECTIONS -d${ROUND_SECONDS}s on core $LOAD_CPU; proxy on core $PROXY_CPU"
  } >"$PROFILE_TXT"
  for target in "gatehouse plain" "nginx plain" "gatehouse auth"; do
    read -r p s <<<"$target"
    read -r -a pids <<<"$(proxy_pids "$p")"
    mapfile -t args < <(wrk_args "$p" "$s" "$ROUND_SECONDS")
    wait_idle
    # Syscalls per request.
    perf stat -x, -e raw_syscalls:sys_enter -p "$(echo "${pids[@]}" | tr ' ' ,)" -o "$WORK/stat.txt" \
      -- sleep "$((ROUND_SECONDS - 1))" &
    statpid=$!
    perf record -q -F 999 --call-graph dwarf,16384 -p "$(echo "${pids[@]}" | tr ' ' ,)" \
      -o "$WORK/perf-$p-$s.data" -- sleep "$((ROUND_SECONDS - 1))" 2>/dev/null &
    recpid=$!
    out=$(taskset -c "$LOAD_CPU" wrk "${args[@]}")
    wait "$statpid" "$recpid" || true
    reqs=$(sed -n 's/^WRKJSON //p' <<<"$out" | python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["requests"] / (j["duration_us"] / 1e6))')
    sys=$(awk -F, '/raw_syscalls/ {print $1}' "$WORK/stat.txt")
    {
      echo
      echo "## $p, $s: $(printf '%.0f' "$reqs") req/s; syscalls/request ≈ $(python3 -c "print(round($sys / ($reqs * ($ROUND_SECONDS - 1)), 2))" 2>/dev/null || echo '?')"
      echo
      echo "### by shared object (self time)"
      perf report -i "$WORK/perf-$p-$s.data" --no-children --sort dso --stdio -g none 2>/dev/null |
        grep -v '^#' | grep -v '^$' | head -n 12
      echo
      echo "### top symbols (self time)"
      perf report -i "$WORK/perf-$p-$s.data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null |
        grep -v '^#' | grep -v '^$' | head -n 45
      if [ "$p" = gatehouse ]; then
        echo
        echo "### gatehouse's own code and what it calls (inclusive, symbols from gatehouse::)"
        perf report -i "$WORK/perf-$p-$s.data" --children --sort symbol --stdio -g none 2>/dev/null |
          grep -E 'gatehouse::' | head -n 30
      fi
    } | sed -E 's/[[:space:]]+-[[:space:]]+-[[:space:]]*$//; s/[[:space:]]+$//' >>"$PROFILE_TXT"
    log "$p $s profiled"
  done
  if [ "${ALLOCS:-0}" = 1 ]; then
    # Heap allocations per request: uprobes on libc malloc/realloc, counted for the proxy's
    # threads only, over 1000 sequential keep-alive requests (curl). Opt-in: while the probes
    # are enabled every process's malloc traps, which slows the rest of the machine.
    LIBC=$(ldd "$BIN" | awk '/libc.so.6/ {print $3}')
    if perf probe -q -x "$LIBC" -a malloc -a realloc 2>/dev/null; then
      {
        echo
        echo "## heap allocations per request (malloc + realloc, 1000 sequential requests on one connection)"
        echo
      } >>"$PROFILE_TXT"
      for target in "gatehouse plain" "nginx plain" "gatehouse auth" "gatehouse not_found_404" "nginx not_found_404" "gatehouse landing"; do
        read -r p s <<<"$target"
        read -r -a pids <<<"$(proxy_pids "$p")"
        tids=$(for q in "${pids[@]}"; do ls "/proc/$q/task"; done | paste -sd,)
        url="http://127.0.0.1:$(proxy_port "$p")$(scenario_path "$s")"
        hdr=()
        if [ "$s" = auth ]; then hdr=(-H "Authorization: Bearer $TOKEN"); fi
        perf stat -x, -e probe_libc:malloc,probe_libc:realloc -t "$tids" -o "$WORK/allocs.txt" -- sleep 3 &
        statpid=$!
        sleep 0.5
        urls=()
        for _ in $(seq 1 1000); do urls+=("$url"); done
        taskset -c "$LOAD_CPU" curl -s --max-time 2.4 "${hdr[@]}" "${urls[@]}" >/dev/null || true
        wait "$statpid" || true
        echo "- $p, $s: $(awk -F, '/probe_libc/ {n += $1} END {printf "%.1f", n / 1000}' "$WORK/allocs.txt") allocations/request" >>"$PROFILE_TXT"
      done
      perf probe -q -d 'probe_libc:malloc' -d 'probe_libc:realloc' 2>/dev/null || true
    fi
  fi
fi
set -o pipefail

# --- report --------------------------------------------------------------------------------
step "report"
{
  echo "{"
  echo "\"date\": \"$(date -u +%FT%TZ)\","
  echo "\"machine\": \"$MACHINE\","
  echo "\"nproc\": \"$(nproc)\","
  echo "\"lscpu\": $(lscpu | head -n 20 | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))'),"
  echo "\"kernel\": \"$(uname -sr)\","
  echo "\"nginx\": \"$(nginx -v 2>&1 | sed 's/.*: //')\","
  echo "\"wrk\": \"$(wrk -v 2>&1 | head -n 1 | cut -d' ' -f1-2)\","
  echo "\"redis\": \"$(redis-server --version | cut -d' ' -f1-3)\","
  echo "\"rustc\": \"$(rustc -V)\","
  echo "\"gatehouse\": \"$("$BIN" --version)\","
  echo "\"pingora_floor\": $([ "$PINGORA_FLOOR" = 1 ] && echo true || echo false),"
  echo "\"engine_floor\": $([ "$ENGINE_FLOOR" = 1 ] && echo true || echo false),"
  echo "\"commit\": \"$BUILT_COMMIT\","
  echo "\"dirty_files\": $BUILT_DIRTY,"
  echo "\"rounds\": $ROUNDS, \"round_seconds\": $ROUND_SECONDS, \"connections\": $CONNECTIONS,"
  echo "\"fixed_rate\": $FIXED_RATE, \"fixed_connections\": $FIXED_CONNECTIONS,"
  echo "\"proxy_cpu\": $PROXY_CPU, \"load_cpu\": $LOAD_CPU, \"idle_wait_max\": $IDLE_WAIT_MAX, \"idle_busy_pct\": $IDLE_BUSY_PCT"
  echo "}"
} >"$WORK/meta.json"
python3 "$LOAD_DIR/report.py" "$WORK/meta.json" "$ROUNDS_CSV" "$IDLE_CSV" "$STEM" \
  "$( [ -f "$PROFILE_TXT" ] && basename "$PROFILE_TXT" || true)"
log "wrote $STEM.md, $STEM.png, $STEM.json"
