#!/usr/bin/env python3
"""Static checks of the deployment files, for machines without a Docker engine or a cluster.

Run by scripts/test.sh (python3 with PyYAML). Checks:

* every YAML file under deploy/, docker-compose.yml and gateway.yaml parses, and the Grafana
  dashboard is valid JSON;
* Dockerfile: a structural lint (hadolint is not packaged for Debian): the stages and base
  images, `cargo build --release --locked`, a non-root numeric USER, HEALTHCHECK, EXPOSE 80
  9091, exec-form ENTRYPOINT/CMD, apt hygiene, and every COPY source exists and is not
  excluded by .dockerignore;
* docker-compose.yml: the seeds' variables reach gatehouse, the admin port is not published,
  the trace endpoint (OTEL_EXPORTER_OTLP_ENDPOINT) is a compose service with OTLP enabled,
  `service_healthy` dependencies have health checks, bind-mounted files exist, every required
  `${VAR:?}` is documented in .env.example (whose JWT_SECRET_KEY is at least 32 bytes), and
  Prometheus scrapes a service that exists;
* deploy/k8s/: the expected objects and how they refer to each other (ConfigMap, Secret keys,
  probes on the admin port, HPA target, PDB selector, kustomization resources);
* with --gatehouse BIN: the ConfigMap's gateway.yaml passes `gatehouse check`, and the image's
  health-check script says healthy against a running gateway and unhealthy against a dead port.

Docker's own validation (`docker-compose config -q`) and the strict check against Kubernetes'
schemas (kubernetes-validate) are separate steps in scripts/test.sh.
Exit status 0 when everything holds, 1 listing every problem.
"""

import argparse
import fnmatch
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SEED_VARS = [
    "DATABASE_URL",
    "REDIS_URL",
    "JWT_SECRET_KEY",
    "JWT_ALGORITHM",
    "DOCTOR_SERVICE_URL",
    "PATIENT_SERVICE_URL",
    "INSTITUTION_SERVICE_URL",
    "ADMIN_SERVICE_URL",
    "CORS_ORIGINS",
    "LOG_LEVEL",
]

problems = []


def problem(where, what):
    problems.append(f"{where}: {what}")


def rel(p):
    return str(Path(p).resolve().relative_to(ROOT))


# ------------------------------------------------------------------------------------------
# YAML and JSON parse
# ------------------------------------------------------------------------------------------


def load_all(path, interpolated=False):
    """Every document of a YAML file. `interpolated`: gatehouse configs, whose `${VAR}`
    references are only YAML after expansion (a placeholder stands in for each)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if interpolated:
            text = re.sub(r"\$\{[^}]*\}", "x", text)
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except (OSError, yaml.YAMLError) as e:
        problem(rel(path), f"does not parse: {e}")
        return []


def check_parse():
    files = [ROOT / "docker-compose.yml", ROOT / "gateway.yaml"]
    files += sorted((ROOT / "deploy").rglob("*.yml")) + sorted((ROOT / "deploy").rglob("*.yaml"))
    for f in files:
        docs = load_all(f, interpolated=f.name == "gateway.yaml")
        if not docs and not any(p.startswith(rel(f)) for p in problems):
            problem(rel(f), "is empty")
    for f in sorted((ROOT / "deploy").rglob("*.json")):
        try:
            json.loads(f.read_text(encoding="utf-8"))
        except ValueError as e:
            problem(rel(f), f"is not valid JSON: {e}")
    return len(files)


# ------------------------------------------------------------------------------------------
# Dockerfile
# ------------------------------------------------------------------------------------------


def dockerfile_instructions(text):
    """(line number, INSTRUCTION, arguments) with continuations joined, comments dropped."""
    out, buf, start = [], "", 0
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not buf:
            start = n
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        word, _, rest = buf.partition(" ")
        out.append((start, word.upper(), rest.strip()))
        buf = ""
    if buf:
        problem("Dockerfile", "ends inside a continued instruction")
    return out


def dockerignore_patterns():
    path = ROOT / ".dockerignore"
    if not path.exists():
        problem(".dockerignore", "missing")
        return []
    pats = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            pats.append(line)
    return pats


def ignored(relpath, patterns):
    """Docker's rule, simplified: the last matching pattern wins; `!` re-includes; a pattern
    matching a parent folder excludes what is inside."""
    parts = relpath.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pat in patterns:
        neg = pat.startswith("!")
        p = pat[1:] if neg else pat
        p = p.lstrip("/")
        for c in candidates:
            if fnmatch.fnmatchcase(c, p) or (
                p.startswith("**/") and fnmatch.fnmatchcase(c.split("/")[-1], p[3:])
            ):
                result = not neg
                break
    return result


def check_dockerfile():
    path = ROOT / "Dockerfile"
    if not path.exists():
        problem("Dockerfile", "missing")
        return
    text = path.read_text(encoding="utf-8")
    ins = dockerfile_instructions(text)
    args = {}
    for _, word, rest in ins:
        if word == "ARG" and "=" in rest:
            k, _, v = rest.partition("=")
            args.setdefault(k.strip(), v.strip())

    def expand(s):
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), s)

    froms = [(n, expand(rest)) for n, word, rest in ins if word == "FROM"]
    if len(froms) < 2:
        problem("Dockerfile", "expected a multi-stage build (build and runtime stages)")
    else:
        first, last = froms[0][1].split(), froms[-1][1].split()
        if first[0] != "rust:1-bookworm" or [w.lower() for w in first[1:]] != ["as", "build"]:
            problem(f"Dockerfile:{froms[0][0]}", f"build stage should be `rust:1-bookworm AS build`, is `{froms[0][1]}`")
        if last[0] != "debian:bookworm-slim":
            problem(f"Dockerfile:{froms[-1][0]}", f"runtime stage should be debian:bookworm-slim, is `{last[0]}`")
    for n, img in froms:
        if img.split()[0].endswith(":latest") or ":" not in img.split()[0]:
            problem(f"Dockerfile:{n}", f"pin a tag instead of `{img.split()[0]}`")

    runs = [(n, rest) for n, word, rest in ins if word == "RUN"]
    if not any("cargo build --release --locked" in r for _, r in runs):
        problem("Dockerfile", "no `cargo build --release --locked`")
    if not any("setcap cap_net_bind_service=+ep /usr/local/bin/gatehouse" in r for _, r in runs):
        problem("Dockerfile", "the binary gets no cap_net_bind_service (needed for port 80 as non-root)")
    for n, r in runs:
        if "apt-get install" in r:
            if "--no-install-recommends" not in r:
                problem(f"Dockerfile:{n}", "apt-get install without --no-install-recommends")
            if "apt-get update" not in r:
                problem(f"Dockerfile:{n}", "apt-get install without apt-get update in the same RUN")
            if "rm -rf /var/lib/apt/lists" not in r:
                problem(f"Dockerfile:{n}", "apt lists are not removed in the same RUN")
            if " -y" not in r:
                problem(f"Dockerfile:{n}", "apt-get install without -y")
        if re.search(r"(^|[;&|]\s*)cd\s", r):
            problem(f"Dockerfile:{n}", "use WORKDIR instead of cd")

    last_stage_start = max((i for i, (_, w, _) in enumerate(ins) if w == "FROM"), default=0)
    runtime = ins[last_stage_start:]
    users = [expand(rest) for _, word, rest in runtime if word == "USER"]
    if not users:
        problem("Dockerfile", "the runtime stage runs as root (no USER)")
    else:
        uid = users[-1].split(":")[0]
        if uid in ("root", "0") or not uid.isdigit():
            problem("Dockerfile", f"USER should be a numeric non-root uid (Kubernetes runAsNonRoot), is `{users[-1]}`")
    words = {w for _, w, _ in runtime}
    for need in ("HEALTHCHECK", "EXPOSE", "ENTRYPOINT", "CMD", "WORKDIR"):
        if need not in words:
            problem("Dockerfile", f"runtime stage has no {need}")
    exposed = set()
    for n, word, rest in runtime:
        if word == "EXPOSE":
            exposed.update(p.split("/")[0] for p in rest.split())
        if word in ("ENTRYPOINT", "CMD"):
            try:
                v = json.loads(rest)
                assert isinstance(v, list) and all(isinstance(x, str) for x in v)
            except (ValueError, AssertionError):
                problem(f"Dockerfile:{n}", f"{word} should be in exec (JSON array) form")
        if word == "WORKDIR" and rest != "/app":
            problem(f"Dockerfile:{n}", f"WORKDIR should be /app, is {rest}")
        if word == "HEALTHCHECK" and "CMD" not in rest:
            problem(f"Dockerfile:{n}", "HEALTHCHECK without CMD")
    if exposed != {"80", "9091"}:
        problem("Dockerfile", f"EXPOSE should be 80 and 9091, is {sorted(exposed)}")
    entry = [json.loads(r) for _, w, r in runtime if w == "ENTRYPOINT"]
    cmd = [json.loads(r) for _, w, r in runtime if w == "CMD"]
    if entry and entry[-1] != ["gatehouse"]:
        problem("Dockerfile", f"ENTRYPOINT should be [\"gatehouse\"], is {entry[-1]}")
    if cmd and cmd[-1] != ["run", "-c", "/app/gateway.yaml"]:
        problem("Dockerfile", f"CMD should be run -c /app/gateway.yaml, is {cmd[-1]}")
    env = " ".join(rest for _, w, rest in runtime if w == "ENV")
    for kv in ("GATEHOUSE_LISTEN=0.0.0.0:80", "GATEHOUSE_ADMIN_LISTEN=0.0.0.0:9091"):
        if kv not in env:
            problem("Dockerfile", f"ENV {kv} missing")

    patterns = dockerignore_patterns()
    for n, word, rest in ins:
        if word not in ("COPY", "ADD"):
            continue
        if word == "ADD":
            problem(f"Dockerfile:{n}", "use COPY, not ADD")
        tokens = shlex.split(rest)
        if any(t.startswith("--from") for t in tokens):
            continue
        srcs = [t for t in tokens if not t.startswith("--")][:-1]
        for s in srcs:
            if s in (".", "./"):
                continue
            p = s.rstrip("/")
            if not (ROOT / p).exists():
                problem(f"Dockerfile:{n}", f"COPY source {s} does not exist")
            elif ignored(p, patterns):
                problem(f"Dockerfile:{n}", f"COPY source {s} is excluded by .dockerignore")
    # The build context must keep what cargo needs, and drop what must never be sent.
    for needed in ("Cargo.toml", "Cargo.lock", "src/main.rs", "benches", "migrations", "templates"):
        if ignored(needed, patterns):
            problem(".dockerignore", f"excludes {needed}, which the build needs")
    for unwanted in ("target", ".git", "test-artifacts", "tests/browser/node_modules", "gatehouse.db"):
        if not ignored(unwanted, patterns):
            problem(".dockerignore", f"does not exclude {unwanted}")


# ------------------------------------------------------------------------------------------
# docker-compose.yml and .env.example
# ------------------------------------------------------------------------------------------


def env_example():
    path = ROOT / ".env.example"
    if not path.exists():
        problem(".env.example", "missing")
        return {}
    out = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            problem(f".env.example:{n}", "not VAR=value")
            continue
        k, _, v = line.partition("=")
        out[k.strip()] = v.strip()
    return out


def check_compose():
    path = ROOT / "docker-compose.yml"
    docs = load_all(path)
    if not docs:
        return
    text = path.read_text(encoding="utf-8")
    compose = docs[0]
    services = compose.get("services") or {}
    env_ex = env_example()

    for var in SEED_VARS:
        if var not in env_ex:
            problem(".env.example", f"does not document {var}")
    secret = env_ex.get("JWT_SECRET_KEY", "")
    if len(secret.encode()) < 32:
        problem(".env.example", "JWT_SECRET_KEY must be at least 32 bytes")
    for m in re.finditer(r"\$\{(\w+):?\?", text):
        if m.group(1) not in env_ex:
            problem("docker-compose.yml", f"requires ${{{m.group(1)}}} but .env.example does not set it")

    gh = services.get("gatehouse")
    if not gh:
        problem("docker-compose.yml", "no gatehouse service")
        return
    build = gh.get("build") or {}
    dockerfile = (build.get("dockerfile") if isinstance(build, dict) else None) or "Dockerfile"
    context = build.get("context", ".") if isinstance(build, dict) else build
    if not (ROOT / context / dockerfile).exists():
        problem("docker-compose.yml", f"gatehouse is built from {context}/{dockerfile}, which does not exist")
    env = gh.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
    for var in SEED_VARS:
        if var not in env:
            problem("docker-compose.yml", f"gatehouse does not get {var}")
        elif var != "CORS_ORIGINS" and f"${{{var}" not in str(env[var]):
            problem("docker-compose.yml", f"gatehouse's {var} is not taken from the environment / .env")
    ports = [str(p) for p in gh.get("ports") or []]
    if not any(p.endswith(":80") or p == "80" for p in ports):
        problem("docker-compose.yml", "gatehouse does not publish port 80")
    if any("9091" in p for p in ports):
        problem("docker-compose.yml", "gatehouse publishes the admin port 9091 (keep it internal)")

    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        if isinstance(deps, dict):
            for dep, cond in deps.items():
                if dep not in services:
                    problem("docker-compose.yml", f"{name} depends on unknown service {dep}")
                    continue
                if (cond or {}).get("condition") == "service_healthy":
                    target = services[dep]
                    if not target.get("healthcheck") and dep != "gatehouse":
                        problem("docker-compose.yml", f"{name} waits for {dep} to be healthy, but {dep} has no healthcheck")
        for vol in svc.get("volumes") or []:
            if isinstance(vol, str) and vol.startswith(("./", "../")):
                src = vol.split(":")[0]
                if not (ROOT / src).exists():
                    problem("docker-compose.yml", f"{name} mounts {src}, which does not exist")
    for dep in ("postgres", "redis"):
        cond = ((gh.get("depends_on") or {}).get(dep) or {}).get("condition")
        if cond != "service_healthy":
            problem("docker-compose.yml", f"gatehouse should wait for {dep} with condition: service_healthy")
    if not (services.get("postgres") or {}).get("healthcheck"):
        problem("docker-compose.yml", "postgres has no healthcheck")

    prom = load_all(ROOT / "deploy/prometheus/prometheus.yml")
    targets = []
    for job in (prom[0] if prom else {}).get("scrape_configs") or []:
        for sc in job.get("static_configs") or []:
            targets += sc.get("targets") or []
    if "gatehouse:9091" not in targets:
        problem("deploy/prometheus/prometheus.yml", "does not scrape gatehouse:9091")
    for t in targets:
        if t.split(":")[0] not in services:
            problem("deploy/prometheus/prometheus.yml", f"target {t} is not a compose service")
    check_trace_backend(services, env, env_ex)
    ds = load_all(ROOT / "deploy/grafana/provisioning/datasources.yml")
    for d in (ds[0] if ds else {}).get("datasources") or []:
        host = re.sub(r"^https?://", "", d.get("url", "")).split(":")[0]
        if host not in services:
            problem("deploy/grafana/provisioning/datasources.yml", f"data source host {host} is not a compose service")


def check_trace_backend(services, env, env_ex):
    """gatehouse exports traces to a service of the stack that receives OTLP/HTTP on the port
    named, and the UI is published on 127.0.0.1 only."""
    where = "docker-compose.yml"
    for var in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME", "OTEL_TRACES_SAMPLER"):
        if var not in env:
            problem(where, f"gatehouse does not get {var}")
        elif f"${{{var}" not in str(env[var]):
            problem(where, f"gatehouse's {var} is not taken from the environment / .env")
        if var not in env_ex:
            problem(".env.example", f"does not document {var}")
    m = re.search(r":-(https?://[^}]*)\}", str(env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")))
    if not m:
        problem(where, "gatehouse's OTEL_EXPORTER_OTLP_ENDPOINT has no default URL")
        return
    url = re.sub(r"^https?://", "", m.group(1)).split("/")[0]
    host, _, port = url.partition(":")
    svc = services.get(host)
    if svc is None:
        problem(where, f"the trace endpoint host {host} is not a compose service")
        return
    if port != "4318":
        problem(where, f"the trace endpoint should be OTLP/HTTP on port 4318, not {port or 'the default'}")
    tenv = svc.get("environment") or {}
    if isinstance(tenv, list):
        tenv = dict(e.split("=", 1) if "=" in e else (e, None) for e in tenv)
    if "jaeger" in str(svc.get("image", "")) and str(tenv.get("COLLECTOR_OTLP_ENABLED")).lower() != "true":
        problem(where, f"{host} does not set COLLECTOR_OTLP_ENABLED=true (no OTLP receiver)")
    exposed = [str(p) for p in (svc.get("expose") or []) + (svc.get("ports") or [])]
    if not any(p.split(":")[-1] == "4318" for p in exposed):
        problem(where, f"{host} does not expose 4318 (OTLP/HTTP)")
    for p in svc.get("ports") or []:
        if not str(p).startswith("127.0.0.1:"):
            problem(where, f"{host} publishes {p} beyond 127.0.0.1")


# ------------------------------------------------------------------------------------------
# deploy/k8s
# ------------------------------------------------------------------------------------------


def check_k8s():
    k8s = ROOT / "deploy/k8s"
    objs = {}
    for f in sorted(k8s.glob("*.yaml")):
        for d in load_all(f):
            if f.name == "kustomization.yaml":
                for r in d.get("resources") or []:
                    if not (k8s / r).exists():
                        problem(rel(f), f"resource {r} does not exist")
                continue
            for key in ("apiVersion", "kind", "metadata"):
                if key not in d:
                    problem(rel(f), f"a document has no {key}")
            kind, name = d.get("kind"), (d.get("metadata") or {}).get("name")
            objs.setdefault(kind, {})[name] = d

    def get(kind, name):
        o = (objs.get(kind) or {}).get(name)
        if o is None:
            problem("deploy/k8s", f"no {kind} {name}")
        return o or {}

    dep = get("Deployment", "gatehouse")
    spec = dep.get("spec") or {}
    if spec.get("replicas") != 3:
        problem("deploy/k8s/deployment.yaml", "replicas should be 3")
    labels = ((spec.get("selector") or {}).get("matchLabels")) or {}
    pod = (spec.get("template") or {}).get("spec") or {}
    pod_labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    if not labels or any(pod_labels.get(k) != v for k, v in labels.items()):
        problem("deploy/k8s/deployment.yaml", "selector does not match the pod labels")
    psc = pod.get("securityContext") or {}
    if psc.get("runAsNonRoot") is not True or not psc.get("runAsUser"):
        problem("deploy/k8s/deployment.yaml", "pod should set runAsNonRoot: true and runAsUser")
    containers = pod.get("containers") or []
    if not containers:
        problem("deploy/k8s/deployment.yaml", "no container")
        return
    c = containers[0]
    ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
    if ports.get("http") != 80 or ports.get("admin") != 9091:
        problem("deploy/k8s/deployment.yaml", f"container ports should be http 80 and admin 9091, are {ports}")
    for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/health")):
        hg = (c.get(probe) or {}).get("httpGet") or {}
        if hg.get("path") != path or hg.get("port") not in ("admin", 9091):
            problem("deploy/k8s/deployment.yaml", f"{probe} should GET {path} on the admin port")
    res = c.get("resources") or {}
    if not (res.get("requests") or {}).get("cpu"):
        problem("deploy/k8s/deployment.yaml", "no CPU request (the HPA needs one)")
    csc = c.get("securityContext") or {}
    if csc.get("allowPrivilegeEscalation") is not False:
        problem("deploy/k8s/deployment.yaml", "allowPrivilegeEscalation should be false")
    caps = csc.get("capabilities") or {}
    if "ALL" in (caps.get("drop") or []) and "NET_BIND_SERVICE" not in (caps.get("add") or []):
        problem("deploy/k8s/deployment.yaml", "dropping ALL capabilities needs NET_BIND_SERVICE added back (file capability on the binary)")
    env = {e.get("name"): e for e in c.get("env") or []}
    secret_keys = set()
    for var in ("JWT_SECRET_KEY", "DATABASE_URL"):
        ref = ((env.get(var) or {}).get("valueFrom") or {}).get("secretKeyRef")
        if not ref:
            problem("deploy/k8s/deployment.yaml", f"{var} should come from a Secret")
        else:
            secret_keys.add((ref.get("name"), ref.get("key")))
    for var in SEED_VARS:
        if var not in env:
            problem("deploy/k8s/deployment.yaml", f"{var} is not set")
    for e in env.values():
        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
        if ref:
            secret_keys.add((ref.get("name"), ref.get("key")))
    for sname, key in secret_keys:
        sec = get("Secret", sname)
        if key not in (sec.get("stringData") or sec.get("data") or {}):
            problem("deploy/k8s/secret.example.yaml", f"Secret {sname} has no key {key}")

    mounts = {m.get("name"): m.get("mountPath") for m in c.get("volumeMounts") or []}
    vols = {v.get("name"): v for v in pod.get("volumes") or []}
    cm_mount = None
    for vname, v in vols.items():
        if "configMap" in v:
            cm = get("ConfigMap", v["configMap"].get("name"))
            cm_mount = mounts.get(vname)
            cfg_path = None
            a = c.get("args") or []
            if "-c" in a and a.index("-c") + 1 < len(a):
                cfg_path = a[a.index("-c") + 1]
            if not cm_mount or not cfg_path or os.path.dirname(cfg_path) != cm_mount:
                problem("deploy/k8s/deployment.yaml", f"`-c {cfg_path}` is not inside the ConfigMap mount {cm_mount}")
            for m in c.get("volumeMounts") or []:
                if m.get("name") == vname and m.get("subPath"):
                    problem("deploy/k8s/deployment.yaml", "a subPath ConfigMap mount never receives updates")
            data = (cm.get("data") or {}).get(os.path.basename(cfg_path or "gateway.yaml"))
            if not data:
                problem("deploy/k8s/configmap.yaml", "no gateway.yaml key")
            else:
                try:
                    g = yaml.safe_load(re.sub(r"\$\{[^}]*\}", "x", data))
                    if (g.get("server") or {}).get("watch_config") is not True:
                        problem("deploy/k8s/configmap.yaml", "server.watch_config should be true")
                except yaml.YAMLError as e:
                    problem("deploy/k8s/configmap.yaml", f"gateway.yaml does not parse: {e}")
    if cm_mount is None:
        problem("deploy/k8s/deployment.yaml", "no ConfigMap volume")

    svcs = objs.get("Service") or {}
    public = [s for s in svcs.values() if any(p.get("port") == 80 for p in (s.get("spec") or {}).get("ports") or [])]
    metrics = [s for s in svcs.values() if any(p.get("port") == 9091 for p in (s.get("spec") or {}).get("ports") or [])]
    for s in svcs.values():
        sel = (s.get("spec") or {}).get("selector") or {}
        if any(pod_labels.get(k) != v for k, v in sel.items()):
            problem("deploy/k8s/service.yaml", f"Service {s['metadata']['name']} selects no gatehouse pod")
    if not public:
        problem("deploy/k8s/service.yaml", "no Service on port 80")
    for s in public:
        for p in s["spec"]["ports"]:
            if p.get("targetPort") not in (80, "http"):
                problem("deploy/k8s/service.yaml", "port 80 should target the container's port 80")
            if p.get("port") == 9091:
                problem("deploy/k8s/service.yaml", "the public Service exposes the admin port")
    if not metrics:
        problem("deploy/k8s/service.yaml", "no metrics Service on 9091")
    for s in metrics:
        if (s.get("spec") or {}).get("type", "ClusterIP") != "ClusterIP":
            problem("deploy/k8s/service.yaml", "the metrics Service must be ClusterIP (cluster-internal)")

    hpa = next(iter((objs.get("HorizontalPodAutoscaler") or {}).values()), None)
    if not hpa:
        problem("deploy/k8s", "no HorizontalPodAutoscaler")
    else:
        ref = hpa["spec"].get("scaleTargetRef") or {}
        if ref.get("kind") != "Deployment" or ref.get("name") != "gatehouse":
            problem("deploy/k8s/hpa.yaml", "does not target Deployment gatehouse")
        cpu = [m for m in hpa["spec"].get("metrics") or [] if (m.get("resource") or {}).get("name") == "cpu"]
        if not cpu or cpu[0]["resource"]["target"].get("averageUtilization") != 70:
            problem("deploy/k8s/hpa.yaml", "should scale on 70 % CPU")
    pdb = next(iter((objs.get("PodDisruptionBudget") or {}).values()), None)
    if not pdb:
        problem("deploy/k8s", "no PodDisruptionBudget")
    else:
        if pdb["spec"].get("minAvailable") != 2:
            problem("deploy/k8s/pdb.yaml", "minAvailable should be 2")
        sel = (pdb["spec"].get("selector") or {}).get("matchLabels") or {}
        if not sel or any(pod_labels.get(k) != v for k, v in sel.items()):
            problem("deploy/k8s/pdb.yaml", "selector does not match the gatehouse pods")


# ------------------------------------------------------------------------------------------
# With the binary: gatehouse check on the ConfigMap, the health-check script against a gateway
# ------------------------------------------------------------------------------------------


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def check_with_binary(binary):
    cm = load_all(ROOT / "deploy/k8s/configmap.yaml")
    with tempfile.TemporaryDirectory(prefix="gatehouse-deploy-check-") as tmp:
        if cm:
            # The pod's /app is the image's; here the repository plays that part.
            text = cm[0]["data"]["gateway.yaml"].replace("/app/", f"{ROOT}/")
            cfg = Path(tmp) / "gateway.yaml"
            cfg.write_text(text, encoding="utf-8")
            env = dict(os.environ)
            env.update(
                DATABASE_URL="postgres://gatehouse:x@127.0.0.1:5432/predicthealth",
                REDIS_URL="redis://127.0.0.1:6379/0",
                JWT_SECRET_KEY="k8s-configmap-check-secret-0123456789abcdef",
                DOCTOR_SERVICE_URL="http://127.0.0.1:8000",
                PATIENT_SERVICE_URL="http://127.0.0.1:8004",
                INSTITUTION_SERVICE_URL="http://127.0.0.1:8002",
                ADMIN_SERVICE_URL="http://127.0.0.1:8001",
            )
            r = subprocess.run([binary, "check", "-c", str(cfg)], env=env, capture_output=True, text=True)
            if r.returncode != 0:
                problem("deploy/k8s/configmap.yaml", f"gatehouse check failed:\n{r.stderr.strip()}")
            else:
                print(f"  configmap gateway.yaml: {r.stdout.strip().split(': ', 1)[-1]}")

        hc = ROOT / "deploy/docker/healthcheck.sh"
        port, admin = free_port(), free_port()
        env = dict(os.environ)
        env.update(
            GATEHOUSE_LISTEN=f"127.0.0.1:{port}",
            GATEHOUSE_ADMIN_LISTEN=f"0.0.0.0:{admin}",
            DATABASE_URL=f"sqlite://{tmp}/users.db",
            REDIS_URL="",
            JWT_SECRET_KEY="",
            # The pid file and upgrade socket out of the way.
            GATEHOUSE_PID_FILE=f"{tmp}/gh.pid",
            GATEHOUSE_UPGRADE_SOCK=f"{tmp}/gh.sock",
        )
        env["HOME"] = tmp
        cfg = Path(tmp) / "hc.yaml"
        # The default gateway.yaml.
        base = (ROOT / "gateway.yaml").read_text(encoding="utf-8")
        base = base.replace("grace_period: 5s", "grace_period: 0s")
        base = base.replace("templates: templates", f"templates: {ROOT}/templates")
        base = base.replace("assets: assets", f"assets: {ROOT}/assets")
        cfg.write_text(base, encoding="utf-8")
        proc = subprocess.Popen(
            [binary, "run", "-c", str(cfg)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            hc_env = dict(os.environ, GATEHOUSE_ADMIN_LISTEN=f"0.0.0.0:{admin}")
            deadline, ok = time.time() + 20, False
            while time.time() < deadline and not ok:
                ok = subprocess.run(["bash", str(hc)], env=hc_env, capture_output=True).returncode == 0
                if not ok:
                    if proc.poll() is not None:
                        break
                    time.sleep(0.2)
            if not ok:
                err = proc.stderr.read().decode(errors="replace")[-800:] if proc.poll() is not None else ""
                problem("deploy/docker/healthcheck.sh", f"never reported a running gateway healthy {err}".strip())
            else:
                print("  healthcheck.sh: healthy against a running gateway")
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        dead = subprocess.run(
            ["bash", str(hc)], env=dict(os.environ, GATEHOUSE_ADMIN_LISTEN=f"127.0.0.1:{free_port()}"), capture_output=True
        )
        if dead.returncode != 1:
            problem("deploy/docker/healthcheck.sh", f"exit {dead.returncode} against a dead port (expected 1)")
        else:
            print("  healthcheck.sh: unhealthy against a dead port")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gatehouse", help="the gatehouse binary, for the checks that run it")
    a = ap.parse_args()
    n = check_parse()
    print(f"  {n} YAML files parse")
    check_dockerfile()
    check_compose()
    check_k8s()
    r = subprocess.run(["bash", "-n", str(ROOT / "deploy/docker/healthcheck.sh")], capture_output=True, text=True)
    if r.returncode != 0:
        problem("deploy/docker/healthcheck.sh", f"bash -n: {r.stderr.strip()}")
    if a.gatehouse:
        check_with_binary(a.gatehouse)
    if problems:
        print("deployment files: problems found", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    print("deployment files: ok (Dockerfile, .dockerignore, docker-compose.yml, .env.example, deploy/k8s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
