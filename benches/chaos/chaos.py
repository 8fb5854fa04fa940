#!/usr/bin/env python3
"""Chaos soak (issue 25): mixed realistic load through two gateways on a Redis Sentinel set and
PostgreSQL while a schedule injects faults. Driven by benches/chaos/run.sh; see the README
section "Reliability".

Everything runs on 127.0.0.1, on free ports, under WORK; everything started is stopped on exit.
Standard library only (matplotlib for the chart when present).

    chaos.py run --bin GATEHOUSE --repo REPO --work WORK --out PREFIX [--duration 600]
    chaos.py fake --port P --name NAME --mode-file F     (an upstream microservice)
"""

import argparse
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

JWT_SECRET = "chaos-soak-hs256-secret-0123456789abcdef0123"
PASSWORD = "chaos soak password 2026"
CLIENT_TIMEOUT = 15.0
# Gateway answers that mean "failing closed on purpose" while a store is down.
FAIL_CLOSED_CODES = {"auth_unavailable", "session_store_unavailable", "store_unavailable"}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# --------------------------------------------------------------------------------------------
# The fake upstream microservice (a separate process, so that killing it is a real kill)
# --------------------------------------------------------------------------------------------


def fake_main(args):
    mode_file = args.mode_file
    name = args.name

    def mode():
        try:
            with open(mode_file) as f:
                return f.read().strip() or "ok"
        except OSError:
            return "ok"

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def answer(self):
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            m = mode()
            if self.path.startswith("/health"):
                status, body = 200, {"status": "ok"}
            elif m == "500":
                status, body = 500, {"error": "internal", "service": name}
            else:
                if m == "slow":
                    time.sleep(2.0)
                status = 200
                body = {
                    "service": name,
                    "path": self.path.split("?")[0],
                    "user": self.headers.get("X-User-Id"),
                    "items": [{"id": i, "note": "x" * 40} for i in range(8)],
                }
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Fake-Upstream", name)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = answer

    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingHTTPServer.request_queue_size = 256
    srv = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    srv.serve_forever()


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


class Procs:
    """Every child started, for cleanup."""

    def __init__(self, work):
        self.work = work
        self.children = []
        self.as_root = os.geteuid() == 0

    def spawn(self, name, argv, env=None):
        log = open(os.path.join(self.work, f"{name}.log"), "ab")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                             start_new_session=True)
        self.children.append(p)
        return p

    def stop_all(self):
        for p in self.children:
            if p.poll() is None:
                try:
                    p.kill()
                except OSError:
                    pass
        for p in self.children:
            try:
                p.wait(timeout=5)
            except Exception:
                pass


def wait_for(pred, limit, step=0.1):
    end = time.time() + limit
    while time.time() < end:
        try:
            if pred():
                return True
        except Exception:
            pass
        time.sleep(step)
    return False


def redis_cli(port, *args):
    out = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
                         capture_output=True, text=True, timeout=10)
    return out.stdout.strip().splitlines()


class Sentinels:
    """A master, a replica and three sentinels (quorum 2, down after 1 s)."""

    def __init__(self, procs):
        self.procs = procs
        self.ports = [free_port(), free_port()]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.servers = {}
        self.start_server(self.ports[0], None)
        self.start_server(self.ports[1], self.ports[0])
        for i, sp in enumerate(self.sentinel_ports):
            conf = os.path.join(procs.work, f"sentinel-{i}.conf")
            with open(conf, "w") as f:
                f.write(f"port {sp}\nbind 127.0.0.1\ndir {procs.work}\n"
                        f"sentinel monitor mymaster 127.0.0.1 {self.ports[0]} 2\n"
                        "sentinel down-after-milliseconds mymaster 1000\n"
                        "sentinel failover-timeout mymaster 3000\n"
                        "sentinel parallel-syncs mymaster 1\n")
            procs.spawn(f"sentinel-{i}", ["redis-server", conf, "--sentinel"])
        for sp in self.sentinel_ports:
            assert wait_for(lambda: redis_cli(sp, "ping") == ["PONG"], 10), "sentinel up"
        nodes = "".join(f"&node=127.0.0.1:{p}" for p in self.sentinel_ports[1:])
        self.url = (f"redis-sentinel://127.0.0.1:{self.sentinel_ports[0]}/0"
                    f"?sentinelServiceName=mymaster{nodes}")

    def start_server(self, port, replica_of):
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self.procs.work]
        if replica_of:
            argv += ["--replicaof", "127.0.0.1", str(replica_of)]
        self.servers[port] = self.procs.spawn(f"redis-{port}", argv)
        assert wait_for(lambda: redis_cli(port, "ping") == ["PONG"], 10), "redis up"

    def master(self):
        out = redis_cli(self.sentinel_ports[0], "SENTINEL", "get-master-addr-by-name",
                        "mymaster")
        return int(out[1])

    def kill_master(self):
        port = self.master()
        self.servers[port].kill()
        self.servers[port].wait()
        return port

    def bring_back(self, port):
        self.start_server(port, self.master())


class Postgres:
    def __init__(self, procs):
        self.procs = procs
        versions = sorted(os.listdir("/usr/lib/postgresql"), key=lambda v: int(v))
        self.bin = f"/usr/lib/postgresql/{versions[-1]}/bin"
        self.dir = os.path.join(procs.work, "pg")
        os.makedirs(os.path.join(self.dir, "sock"))
        self.port = free_port()
        if procs.as_root:
            subprocess.run(["chown", "-R", "postgres", self.dir], check=True)
            os.chmod(procs.work, 0o755)
        self.tool("initdb", "-D", f"{self.dir}/data", "-U", "postgres", "--auth=trust")
        self.start()
        self.tool("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                  "gatehouse_chaos")
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/gatehouse_chaos"

    def tool(self, name, *args):
        argv = [f"{self.bin}/{name}", *args]
        if self.procs.as_root:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self):
        opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir}/sock "
                "-c fsync=off -c max_connections=100")
        self.tool("pg_ctl", "-D", f"{self.dir}/data", "-l", f"{self.dir}/pg.log", "-w",
                  "-o", opts, "start")

    def stop(self):
        self.tool("pg_ctl", "-D", f"{self.dir}/data", "-m", "immediate", "stop")


class Fake:
    def __init__(self, procs, name):
        self.procs, self.name = procs, name
        self.port = free_port()
        self.mode_file = os.path.join(procs.work, f"fake-{name}.mode")
        self.set_mode("ok")
        self.start()

    def start(self):
        self.proc = self.procs.spawn(
            f"fake-{self.name}",
            [sys.executable, os.path.abspath(__file__), "fake", "--port", str(self.port),
             "--name", self.name, "--mode-file", self.mode_file])
        assert wait_for(lambda: socket.create_connection(("127.0.0.1", self.port), 1), 10)

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    def set_mode(self, m):
        with open(self.mode_file, "w") as f:
            f.write(m)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"


class Gateway:
    """One gatehouse instance on the shipped gateway.yaml (a copy per instance)."""

    def __init__(self, procs, name, binary, repo, env):
        self.procs, self.name, self.binary = procs, name, binary
        self.port, self.admin = free_port(), free_port()
        self.config = os.path.join(procs.work, f"{name}.yaml")
        with open(os.path.join(repo, "gateway.yaml")) as f:
            self.good = f.read()
        self.write_config(self.good)
        self.env = dict(os.environ, **env,
                        GATEHOUSE_LISTEN=f"127.0.0.1:{self.port}",
                        GATEHOUSE_ADMIN_LISTEN=f"127.0.0.1:{self.admin}",
                        GATEHOUSE_UPGRADE_SOCK=os.path.join(procs.work, f"{name}-upgrade.sock"),
                        GATEHOUSE_PID_FILE=os.path.join(procs.work, f"{name}.pid"))
        self.generation = 0
        self.proc = self.spawn([])
        assert wait_for(self.ready, 30), f"{name} did not start"

    def spawn(self, extra):
        self.generation += 1
        return self.procs.spawn(f"{self.name}-{self.generation}",
                                [self.binary, "run", "-c", self.config, *extra], env=self.env)

    def ready(self):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        c.request("GET", "/health")
        ok = c.getresponse().status == 200
        c.close()
        return ok

    def write_config(self, text):
        tmp = self.config + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.config)

    def reload(self, broken=False):
        if broken:
            self.write_config(self.good + "\nroutes: [this is: not valid\n")
        else:
            self.write_config(self.good + f"\n# reloaded at {time.time():.0f}\n")
        self.proc.send_signal(signal.SIGHUP)

    def upgrade(self):
        """`run --upgrade` beside the old process, then SIGQUIT to the old one."""
        old = self.proc
        new = self.spawn(["--upgrade"])
        time.sleep(2.0)
        old.send_signal(signal.SIGQUIT)
        self.proc = new
        old.wait(timeout=30)

    def metric(self, name):
        c = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=2)
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
        c.close()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and not line.startswith("#"):
                total += float(line.rsplit(" ", 1)[1])
        return total


def add_user(binary, db, email, role, name):
    out = subprocess.run([binary, "user", "add", "--email", email, "--role", role, "--name",
                          name], input=PASSWORD + "\n", capture_output=True, text=True,
                         env=dict(os.environ, DATABASE_URL=db), timeout=60)
    if out.returncode != 0 and "exists" not in out.stderr:
        raise SystemExit(f"user add {email}: {out.stderr}")


# --------------------------------------------------------------------------------------------
# Load
# --------------------------------------------------------------------------------------------


class Recorder:
    def __init__(self, t0):
        self.t0 = t0
        self.lock = threading.Lock()
        self.rows = []  # (t, client, instance, what, status, ms, outcome, code, path)
        self.lost_sessions = set()

    def add(self, *row):
        with self.lock:
            self.rows.append(row)


def request(port, method, path, headers, body=None):
    """One request on a fresh connection (clients change instance per request)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT)
    try:
        c.request(method, path, body=body, headers=headers)
        r = c.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.headers.get_all(
            "Set-Cookie") or [], data
    finally:
        c.close()


def classify(status, headers, data, expect_session):
    code = ""
    if "x-fake-upstream" in headers:
        return ("ok" if status < 400 else "upstream_error"), code
    if status < 400:
        return "ok", code
    try:
        code = json.loads(data)["error"]["code"]
    except Exception:
        m = re.search(rb'data-error-code="([a-z_]+)"', data or b"")
        code = m.group(1).decode() if m else ""
    if status == 503 and code in FAIL_CLOSED_CODES:
        return "fail_closed", code
    if status == 503 and code == "upstream_unavailable":
        # No backend may take the request (circuit open, none healthy): the gateway sheds
        # load for a failing upstream; counted apart, and as a gateway failure only while
        # that upstream is healthy (see report).
        return "shed", code
    if status == 401 and expect_session:
        return "session_lost", code
    return "gateway_error", code


class Client(threading.Thread):
    BROWSER = {
        "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        "Accept-Encoding": "gzip, deflate, br",
        "Accept-Language": "es-ES,es;q=0.9",
        "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chaos/1.0",
    }
    API = {"Accept": "application/json", "Accept-Encoding": "gzip, deflate, br",
           "User-Agent": "python-requests/2.32 chaos"}

    def __init__(self, kind, email, gateways, rec, stop):
        super().__init__(daemon=True)
        self.kind, self.email, self.gws, self.rec, self.stop = kind, email, gateways, rec, stop
        self.cookies = {}
        self.token = None
        self.user_id = None

    def gw(self):
        return random.choice(self.gws)

    def call(self, what, method, path, headers, body=None, expect_session=False, g=None):
        g = g or self.gw()
        h = dict(headers)
        if self.cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        t = time.time()
        try:
            status, rh, cookies, data = request(g.port, method, path, h, body)
        except Exception as e:
            self.rec.add(t - self.rec.t0, self.kind, g.name, what, 0,
                         (time.time() - t) * 1000, "conn_error", type(e).__name__, path)
            return None
        for c in cookies:
            k, _, v = c.split(";", 1)[0].partition("=")
            if v:
                self.cookies[k.strip()] = v.strip()
            else:
                self.cookies.pop(k.strip(), None)
        outcome, code = classify(status, rh, data, expect_session)
        if outcome == "session_lost":
            self.rec.lost_sessions.add((self.kind, self.email, self.token or
                                        self.cookies.get("predicthealth_session")))
        self.rec.add(t - self.rec.t0, self.kind, g.name, what, status,
                     (time.time() - t) * 1000, outcome, code, path)
        return status, rh, data

    def pause(self, lo, hi):
        self.stop.wait(random.uniform(lo, hi))

    def run(self):
        while not self.stop.is_set():
            try:
                (self.browser if self.kind == "browser" else self.api)()
            except Exception as e:  # a bug here must not stop the soak silently
                self.rec.add(time.time() - self.rec.t0, self.kind, "-", "client", 0, 0,
                             "client_bug", repr(e)[:80], "-")
                self.pause(0.5, 1.0)

    def browser(self):
        self.cookies = {}
        self.call("page", "GET", "/", self.BROWSER)
        r = self.call("page", "GET", "/login?portal=patient", self.BROWSER)
        csrf = ""
        if r:
            m = re.search(rb'name="csrf_token" value="([^"]*)"', r[2])
            csrf = m.group(1).decode() if m else ""
        self.call("asset", "GET", "/assets/css/site.css", self.BROWSER)
        self.call("asset", "GET", "/assets/js/app.js", self.BROWSER)
        self.pause(0.2, 0.5)
        g = self.gw()
        form = urllib.parse.urlencode({"email": self.email, "password": PASSWORD,
                                       "csrf_token": csrf, "next": "/patient/dashboard"})
        h = dict(self.BROWSER, **{"Content-Type": "application/x-www-form-urlencoded",
                                  "Origin": f"http://127.0.0.1:{g.port}"})
        r = self.call("login", "POST", "/api/web/auth/patient/login", h, form, g=g)
        if not r or "predicthealth_session" not in self.cookies:
            self.pause(0.5, 1.0)
            return
        for _ in range(random.randint(3, 6)):
            if self.stop.is_set():
                return
            self.call("dashboard", "GET", "/patient/dashboard", self.BROWSER,
                      expect_session=True)
            self.call("asset", "GET", "/assets/css/site.css", self.BROWSER)
            self.pause(0.3, 0.8)
        self.call("logout", "GET", "/logout", self.BROWSER)
        self.pause(0.3, 0.8)

    def api(self):
        if self.token is None:
            body = json.dumps({"email": self.email, "password": PASSWORD})
            r = self.call("login", "POST", "/api/v1/auth/login",
                          dict(self.API, **{"Content-Type": "application/json"}), body)
            if not r or r[0] != 200:
                self.pause(0.3, 0.6)
                return
            v = json.loads(r[2])
            self.token = v["access_token"]
            self.user_id = v.get("user", {}).get("id", 1)
            self.born = time.time()
        h = dict(self.API, Authorization=f"Bearer {self.token}")
        self.call("api", "GET", f"/api/v1/patients/{self.user_id}", h, expect_session=True)
        self.pause(0.05, 0.15)
        self.call("api", "GET", f"/api/v1/doctors/{self.user_id}/schedule", h,
                  expect_session=True)
        self.pause(0.05, 0.15)
        # A session lives about a minute; then logout and sign in again.
        if time.time() - self.born > random.uniform(50, 70):
            self.call("logout", "POST", "/api/v1/auth/logout", h)
            self.token = None


class Probe(threading.Thread):
    """Signs in through one instance every 250 ms: when sign-in works."""

    def __init__(self, gw, email, t0, stop):
        super().__init__(daemon=True)
        self.gw, self.email, self.t0, self.stop = gw, email, t0, stop
        self.results = []  # (t, ok)

    def run(self):
        body = json.dumps({"email": self.email, "password": PASSWORD})
        h = {"Content-Type": "application/json", "Accept": "application/json"}
        while not self.stop.is_set():
            t = time.time()
            try:
                status, _, _, data = request(self.gw.port, "POST", "/api/v1/auth/login", h, body)
                ok = status == 200
                if ok:
                    tok = json.loads(data)["access_token"]
                    request(self.gw.port, "POST", "/api/v1/auth/logout",
                            dict(h, Authorization=f"Bearer {tok}"))
            except Exception:
                ok = False
            self.results.append((t - self.t0, ok))
            self.stop.wait(max(0.0, 0.25 - (time.time() - t)))


class Sampler(threading.Thread):
    def __init__(self, gateways, t0, stop):
        super().__init__(daemon=True)
        self.gws, self.t0, self.stop = gateways, t0, stop
        self.samples = []  # (t, instance, pid, rss_kib, fds)

    def run(self):
        while not self.stop.is_set():
            for g in self.gws:
                pid = g.proc.pid
                try:
                    with open(f"/proc/{pid}/status") as f:
                        rss = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
                    fds = len(os.listdir(f"/proc/{pid}/fd"))
                    self.samples.append((time.time() - self.t0, g.name, pid, rss, fds))
                except (OSError, AttributeError):
                    pass
            self.stop.wait(5.0)


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def schedule(duration):
    """(at seconds, action, phase name) scaled to `duration` (600 s nominal)."""
    s = duration / 600.0
    return [(round(t * s), a, n) for t, a, n in [
        (0, None, "warm-up"),
        (60, "kill_redis_master", "Redis master killed"),
        (120, "redis_back", "steady (old master back as replica)"),
        (150, "pg_restart", "PostgreSQL restarted"),
        (210, "kill_upstream", "an upstream killed"),
        (260, "upstream_back", "upstream back"),
        (300, "upstream_500", "upstream answering 500s"),
        (330, "upstream_slow", "upstream slow (2 s)"),
        (360, "upstream_ok", "steady"),
        (390, "broken_reload", "reload with a broken file"),
        (420, "upgrade", "binary upgrade of one instance"),
        (480, "steady", "steady (leak check)"),
    ]]


def run_main(args):
    work = args.work
    procs = Procs(work)
    stop = threading.Event()
    events = []  # (t, what)
    try:
        for d in ("templates", "assets"):
            os.symlink(os.path.join(args.repo, d), os.path.join(work, d))
        print("starting Redis Sentinel set, PostgreSQL, upstreams", flush=True)
        redis = Sentinels(procs)
        pg = Postgres(procs)
        fakes = {n: Fake(procs, n) for n in ("patients-1", "patients-2", "doctors",
                                              "institutions", "admins")}
        env = {
            "DATABASE_URL": pg.url, "REDIS_URL": redis.url, "JWT_SECRET_KEY": JWT_SECRET,
            "PATIENT_SERVICE_URL": f"{fakes['patients-1'].url},{fakes['patients-2'].url}",
            "DOCTOR_SERVICE_URL": fakes["doctors"].url,
            "INSTITUTION_SERVICE_URL": fakes["institutions"].url,
            "ADMIN_SERVICE_URL": fakes["admins"].url,
            "LOG_LEVEL": "warn", "GATEHOUSE_THREADS": "1",
            # The shipped config requires a second factor for staff roles, and with a shared
            # store every instance needs the same key.
            "MFA_ENCRYPTION_KEY": "Y2hhb3Mtc29hay1tZmEta2V5LTMyLWJ5dGVzLWxvbmc=",
        }
        subprocess.run([args.bin, "migrate"], env=dict(os.environ, DATABASE_URL=pg.url),
                       check=True, capture_output=True, timeout=60)
        emails = {}
        for kind, n in (("browser", args.browsers), ("api", args.api_clients), ("probe", 2)):
            emails[kind] = [f"{kind}{i}@chaos.test" for i in range(n)]
            for e in emails[kind]:
                add_user(args.bin, pg.url, e, "patient", kind.title())
        print("starting two gateways", flush=True)
        gws = [Gateway(procs, f"gw{i}", args.bin, args.repo, env) for i in (1, 2)]

        t0 = time.time()
        rec = Recorder(t0)
        clients = [Client("browser", e, gws, rec, stop) for e in emails["browser"]]
        clients += [Client("api", e, gws, rec, stop) for e in emails["api"]]
        probes = [Probe(g, emails["probe"][i], t0, stop) for i, g in enumerate(gws)]
        sampler = Sampler(gws, t0, stop)
        for th in clients + probes + [sampler]:
            th.start()

        sched = schedule(args.duration)
        next_reload = 30 * args.duration / 600.0
        killed_port = None
        for at, action, name in sched[1:] + [(args.duration, "end", "end")]:
            while time.time() - t0 < at:
                now = time.time() - t0
                if now >= next_reload:
                    if not any(a == "upgrade" and abs(now - t) < 15 for t, a, _ in
                               [(x, y, z) for x, y, z in sched]):
                        for g in gws:
                            g.reload()
                        events.append((now, "reload"))
                    next_reload += 30 * args.duration / 600.0
                time.sleep(0.05)
            now = time.time() - t0
            print(f"[{now:6.1f}s] {action}", flush=True)
            if action == "kill_redis_master":
                killed_port = redis.kill_master()
            elif action == "redis_back":
                redis.bring_back(killed_port)
            elif action == "pg_restart":
                pg.stop()
                events.append((time.time() - t0, "pg_down"))
                time.sleep(5.0)
                pg.start()
                events.append((time.time() - t0, "pg_up"))
            elif action == "kill_upstream":
                fakes["patients-2"].kill()
            elif action == "upstream_back":
                fakes["patients-2"].start()
            elif action == "upstream_500":
                fakes["doctors"].set_mode("500")
            elif action == "upstream_slow":
                fakes["doctors"].set_mode("slow")
            elif action == "upstream_ok":
                fakes["doctors"].set_mode("ok")
            elif action == "broken_reload":
                gws[1].reload(broken=True)
                events.append((time.time() - t0, "broken_reload"))
                time.sleep(5.0)
                gws[1].reload()
                events.append((time.time() - t0, "reload"))
            elif action == "upgrade":
                gws[0].upgrade()
                events.append((time.time() - t0, "upgrade_done"))
            if action != "end":
                events.append((now, action))
        stop.set()
        for th in clients + probes:
            th.join(timeout=CLIENT_TIMEOUT + 5)
        sampler.join(timeout=10)
        reload_failures = gws[1].metric("gatehouse_config_reloads_total{result=\"failure\"")
        audit_dropped = sum(g.metric("gatehouse_audit_dropped_total") for g in gws)
        report(args, sched, events, rec, probes, sampler, reload_failures, audit_dropped)
    finally:
        stop.set()
        try:
            pg.stop()
        except Exception:
            pass
        procs.stop_all()


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def pct(values, p):
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def recovery(probes, since):
    """Seconds from `since` until sign-in works through every instance (None: never)."""
    worst = 0.0
    for p in probes:
        after = [t for t, ok in p.results if t >= since and ok]
        if not after:
            return None
        worst = max(worst, after[0] - since)
    return worst


def report(args, sched, events, rec, probes, sampler, reload_failures, audit_dropped):
    ev = {}
    for t, what in events:
        ev.setdefault(what, []).append(t)
    kill_at = ev.get("kill_redis_master", [None])[0]
    pg_up = ev.get("pg_up", [None])[0]
    pg_down = ev.get("pg_down", [None])[0]
    rec_redis = recovery(probes, kill_at) if kill_at is not None else None
    rec_pg = recovery(probes, pg_up) if pg_up is not None else None
    # A store outage: from the fault until sign-in is back (+1 s for requests in flight).
    outages = []
    if kill_at is not None:
        outages.append((kill_at, kill_at + (rec_redis if rec_redis is not None else 60) + 1))
    if pg_down is not None and pg_up is not None:
        outages.append((pg_down, pg_up + (rec_pg if rec_pg is not None else 60) + 1))

    def in_outage(t):
        return any(lo <= t < hi for lo, hi in outages)
    # HTML 503 pages carry no error code: within a store outage they are the fail-closed
    # answer; elsewhere a gateway failure.
    rows = [r[:6] + ("fail_closed", r[7] or "html", r[8]) if r[6] == "gateway_error" and r[4] == 503
            and not r[7] and in_outage(r[0]) else r for r in rec.rows]
    # Load shed for an upstream is expected while it fails (and for the breaker's recovery,
    # 15 s, after); at any other time it is a failure the gateway caused.
    faulty = []
    if ev.get("upstream_500") and ev.get("upstream_ok"):
        faulty.append(("/api/v1/doctors", ev["upstream_500"][0], ev["upstream_ok"][0] + 15))
    if ev.get("kill_upstream") and ev.get("upstream_back"):
        faulty.append(("/api/v1/patients", ev["kill_upstream"][0], ev["upstream_back"][0] + 15))

    def expected_shed(r):
        return any(r[8].startswith(pre) and lo <= r[0] < hi for pre, lo, hi in faulty)
    rows = [r[:6] + ("gateway_error",) + r[7:] if r[6] == "shed" and not expected_shed(r)
            else r for r in rows]
    phases = []
    bounds = [(at, name) for at, _, name in sched] + [(args.duration, "end")]
    for (start, name), (end, _) in zip(bounds, bounds[1:]):
        sel = [r for r in rows if start <= r[0] < end]
        by = {}
        for r in sel:
            by[r[6]] = by.get(r[6], 0) + 1
        ok_ms = [r[5] for r in sel if r[6] == "ok"]
        phases.append({
            "phase": name, "from_s": start, "to_s": end, "requests": len(sel),
            "outcomes": by,
            "gateway_failures": by.get("gateway_error", 0) + by.get("conn_error", 0),
            "p50_ms": round(pct(ok_ms, 0.5), 1), "p99_ms": round(pct(ok_ms, 0.99), 1),
        })
    # Failures the gateway caused around reloads and the upgrade.
    def failures_in(lo, hi):
        return [r for r in rows if lo <= r[0] < hi and r[6] in ("gateway_error", "conn_error")]
    reload_fail = sum(len(failures_in(t - 1, t + 3)) for t in ev.get("reload", []))
    upgrade_at = ev.get("upgrade", [None])[0]
    upgrade_done = ev.get("upgrade_done", [None])[0]
    upgrade_fail = (len(failures_in(upgrade_at - 1, upgrade_done + 5))
                    if upgrade_at is not None else None)
    # Protected routes while the store was down: fail closed, never a 200 without a check.
    # (The Redis outage only: PostgreSQL holds users, not sessions.) A 200 on a protected
    # route counts against the target when that instance's sign-in probe still failed after
    # the answer was complete: the store was down for it, yet a request was served.
    protected_200_store_down = []
    if kill_at is not None:
        for p in probes:
            back = next((t for t, ok in p.results if t >= kill_at and ok), args.duration)
            fails = [t for t, ok in p.results if kill_at <= t < back and not ok]
            for r in rows:
                done = r[0] + r[5] / 1000
                if (r[2] == p.gw.name and r[3] in ("api", "dashboard") and r[4] == 200
                        and kill_at <= r[0] and any(f > done for f in fails)):
                    protected_200_store_down.append(
                        {"at_s": round(r[0] - kill_at, 2), "instance": r[2], "path": r[8],
                         "sign_in_back_s": round(back - kill_at, 2)})
    # RSS: each process's own series after warm-up (the upgraded instance is a new process).
    rss = {}
    warm = 60 * args.duration / 600.0
    for t, name, pid, kib, fds in sampler.samples:
        rss.setdefault((name, pid), []).append((t, kib, fds))
    leak = {}
    last_phase = sched[-1][0]
    for (name, pid), series in rss.items():
        after = [k for t, k, _ in series if t >= warm]
        if len(after) >= 6:
            first = statistics.mean(after[:3])
            last = statistics.mean(after[-3:])
            # The leak check proper: the last phase runs one steady load without faults (the
            # reloads every 30 s go on); over it a leak grows RSS, while the allocator's
            # high-water mark left by earlier peaks (a slow upstream: many requests in flight)
            # does not.
            steady = [k for t, k, _ in series if t >= last_phase + 20 * args.duration / 600.0]
            entry = {
                "rss_first_mib": round(first / 1024, 1), "rss_last_mib": round(last / 1024, 1),
                "change_pct": round(100 * (last - first) / first, 1),
                "fds_first": series[0][2], "fds_max": max(f for _, _, f in series),
                "fds_last": series[-1][2]}
            if len(steady) >= 6:
                a, b = statistics.mean(steady[:3]), statistics.mean(steady[-3:])
                entry.update({"steady_first_mib": round(a / 1024, 1),
                              "steady_last_mib": round(b / 1024, 1),
                              "steady_change_pct": round(100 * (b - a) / a, 1)})
            leak[f"{name} (pid {pid})"] = entry
    total = len(rows)
    kinds = {}
    for r in rows:
        if r[6] in ("gateway_error", "conn_error", "session_lost"):
            k = f"{r[6]} {r[3]} {'/'.join(r[8].split('/')[:4])} {r[4]} {r[7]}"
            kinds[k] = kinds.get(k, 0) + 1
    gateway_failed = sum(p["gateway_failures"] for p in phases)
    result = {
        "duration_s": args.duration, "requests": total,
        "gateway_caused_failures": gateway_failed,
        "signin_back_after_redis_master_killed_s": rec_redis,
        "signin_back_after_postgres_returned_s": rec_pg,
        "postgres_down_s": round(pg_up - pg_down, 1) if pg_up and pg_down else None,
        "failures_around_reloads": reload_fail,
        "reload_failures_counted_by_gateway": reload_failures,
        "audit_rows_dropped": audit_dropped,
        "failures_during_upgrade": upgrade_fail,
        "sessions_lost": len(rec.lost_sessions),
        "protected_200_while_store_down": len(protected_200_store_down),
        "protected_200_while_store_down_detail": protected_200_store_down,
        "failure_kinds": dict(sorted(kinds.items(), key=lambda kv: -kv[1])),
        "rss": leak, "phases": phases, "events": events,
        "machine": machine(), "samples": sampler.samples,
        "probes": {p.gw.name: p.results for p in probes},
    }
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    with open(args.out + ".md", "w") as f:
        f.write(markdown(result))
    chart(args.out + ".png", rows, sampler.samples, events, args.duration)
    print(markdown(result))


def machine():
    def sh(*a):
        try:
            return subprocess.run(a, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:
            return "?"
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = re.search(r"model name\s*:\s*(.*)", f.read()).group(1)
    except Exception:
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "kernel": sh("uname", "-r"),
            "gatehouse": sh(sys.argv[sys.argv.index("--bin") + 1], "--version"),
            "redis": sh("redis-server", "--version"),
            "postgres": sh("/usr/lib/postgresql/"
                           f"{sorted(os.listdir('/usr/lib/postgresql'), key=int)[-1]}"
                           "/bin/postgres", "--version"),
            "python": sys.version.split()[0]}


def target(ok):
    return "met" if ok else "**missed**"


def markdown(r):
    m = r["machine"]
    out = [f"# Chaos soak, {time.strftime('%Y-%m-%d')}", "",
           f"Machine: {m['cpus']} CPUs ({m['cpu']}), Linux {m['kernel']}; {m['gatehouse']}; "
           f"{m['redis']}; {m['postgres']}. Two gateways (`server.threads: 1`, the shipped "
           f"`gateway.yaml`), a Redis Sentinel set (master, replica, three sentinels), "
           f"PostgreSQL, five fake upstream services; {r['duration_s']} s; "
           f"{r['requests']} requests.", "",
           "## Targets", "", "| target | figure | |", "|---|---|---|"]
    rr, rp = r["signin_back_after_redis_master_killed_s"], r["signin_back_after_postgres_returned_s"]
    out.append(f"| 0 failed requests from reloads | {r['failures_around_reloads']} | "
               f"{target(r['failures_around_reloads'] == 0)} |")
    out.append(f"| 0 failed requests from the binary upgrade | {r['failures_during_upgrade']} | "
               f"{target(r['failures_during_upgrade'] == 0)} |")
    out.append(f"| sign-in back ≤ 5 s after the Redis master is killed | "
               f"{'never' if rr is None else f'{rr:.1f} s'} | {target(rr is not None and rr <= 5)} |")
    out.append(f"| sign-in back ≤ 5 s after PostgreSQL returns | "
               f"{'never' if rp is None else f'{rp:.1f} s'} | {target(rp is not None and rp <= 5)} |")
    out.append(f"| no session lost | {r['sessions_lost']} | {target(r['sessions_lost'] == 0)} |")
    steady = {k: v for k, v in r["rss"].items() if "steady_change_pct" in v}
    flat = bool(steady) and all(v["steady_change_pct"] <= 10 for v in steady.values())
    out.append("| RSS flat within 10 % under steady load (last phase: no leak) | " + ", ".join(
        f"{k}: {v['steady_first_mib']}→{v['steady_last_mib']} MiB "
        f"({v['steady_change_pct']:+} %)" for k, v in steady.items()) + f" | {target(flat)} |")
    whole = all(abs(v["change_pct"]) <= 10 for v in r["rss"].values())
    out.append("| RSS within 10 % from warm-up to the end, across every fault | " + ", ".join(
        f"{k}: {v['rss_first_mib']}→{v['rss_last_mib']} MiB ({v['change_pct']:+} %)"
        for k, v in r["rss"].items()) + f" | {target(whole)} |")
    out.append(f"| protected routes fail closed while the store is down | "
               f"{r['protected_200_while_store_down']} answers 200 | "
               f"{target(r['protected_200_while_store_down'] == 0)} |")
    out += ["", f"Failures the gateway caused over the whole run: {r['gateway_caused_failures']} "
            "(gateway-made 5xx or unexpected 4xx, and connection errors; the upstreams' own "
            "answers and 503 fail-closed answers during a store outage are counted apart). "
            f"Reload failures the gateway counted (the broken file): "
            f"{r['reload_failures_counted_by_gateway']:.0f}. Access audit rows dropped "
            f"(counted by the gateways; the audited routes are `audit: true`, which serves and "
            f"counts while the database is away): {r['audit_rows_dropped']:.0f}.", "",
            "## Phases", "",
            "| phase | from | requests | ok | upstream's own errors | shed for a failing "
            "upstream (503) | fail closed (503) | gateway failures | sessions lost | p50 ms | "
            "p99 ms |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in r["phases"]:
        o = p["outcomes"]
        out.append(f"| {p['phase']} | {p['from_s']} s | {p['requests']} | {o.get('ok', 0)} | "
                   f"{o.get('upstream_error', 0)} | {o.get('shed', 0)} | "
                   f"{o.get('fail_closed', 0)} | "
                   f"{p['gateway_failures']} | {o.get('session_lost', 0)} | {p['p50_ms']} | "
                   f"{p['p99_ms']} |")
    out += ["", "## Failures by kind (outcome, request, status, code)", "",
            "| kind | count |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in r["failure_kinds"].items()] or ["| none | 0 |"]
    out += ["", "## Memory and file descriptors", "",
            "| process | RSS after warm-up | RSS at the end | change | last phase | fds "
            "(first / max / last) |",
            "|---|---|---|---|---|---|"]
    for k, v in r["rss"].items():
        last = (f"{v['steady_first_mib']}→{v['steady_last_mib']} MiB "
                f"({v['steady_change_pct']:+} %)" if "steady_change_pct" in v else "-")
        out.append(f"| {k} | {v['rss_first_mib']} MiB | {v['rss_last_mib']} MiB | "
                   f"{v['change_pct']:+} % | {last} | {v['fds_first']} / {v['fds_max']} / "
                   f"{v['fds_last']} |")
    return "\n".join(out) + "\n"


def chart(path, rows, samples, events, duration):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no chart", file=sys.stderr)
        return
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(12, 7), sharex=True)
    kinds = ["ok", "upstream_error", "shed", "fail_closed", "gateway_error", "conn_error",
             "session_lost"]
    secs = int(duration) + 1
    for k in kinds:
        counts = [0] * secs
        for r in rows:
            if r[6] == k and 0 <= int(r[0]) < secs:
                counts[int(r[0])] += 1
        if any(counts):
            ax1.plot(range(secs), counts, label=k, linewidth=0.8)
    ax1.set_ylabel("requests / s")
    ax1.legend(loc="upper right", fontsize=8)
    for name in sorted({s[1] for s in samples}):
        pts = [(t, kib / 1024) for t, n, _, kib, _ in samples if n == name]
        ax2.plot([p[0] for p in pts], [p[1] for p in pts], label=f"{name} RSS (MiB)")
    ax2.set_ylabel("RSS MiB")
    ax2.set_xlabel("seconds")
    ax2.legend(loc="upper right", fontsize=8)
    for t, what in events:
        if what in ("reload",):
            continue
        for ax in (ax1, ax2):
            ax.axvline(t, color="grey", linestyle=":", linewidth=0.8)
        ax1.text(t, ax1.get_ylim()[1] * 0.95, what, rotation=90, fontsize=7, va="top")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fake")
    f.add_argument("--port", type=int, required=True)
    f.add_argument("--name", required=True)
    f.add_argument("--mode-file", required=True)
    r = sub.add_parser("run")
    r.add_argument("--bin", required=True)
    r.add_argument("--repo", required=True)
    r.add_argument("--work", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--duration", type=float, default=600)
    r.add_argument("--browsers", type=int, default=4)
    r.add_argument("--api-clients", type=int, default=4)
    args = ap.parse_args()
    if args.cmd == "fake":
        fake_main(args)
    else:
        run_main(args)


if __name__ == "__main__":
    main()
