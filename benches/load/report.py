#!/usr/bin/env python3
"""Turns the raw numbers of benches/load/run.sh into STEM.md (report), STEM.png (chart) and
STEM.json (every raw number).

Usage: report.py META_JSON ROUNDS_CSV IDLE_CSV STEM [PROFILE_FILE_NAME]
       report.py --from-json STEM [PROFILE_FILE_NAME]   (re-render from STEM.json)
A hand-written analysis placed after the ANALYSIS_MARK comment in STEM.md is kept.
"""
import csv
import json
import os
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.patches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

PROXIES = ["gatehouse", "nginx"]
COLORS = {"gatehouse": "#0b6e69", "nginx": "#9aa5b1"}
LABELS = {
    "plain": "plain proxy",
    "auth": "JWT + live session",
    "noauth_401": "401 (no token)",
    "not_found_404": "404",
    "landing": "landing page",
    "asset": "static asset",
    "fixed_rate": "plain, fixed rate",
    "rc_plain": "real client: plain proxy",
    "rc_auth": "real client: JWT + live session",
    "rc_json": "real client: 1.2 KiB JSON, gzip",
    "rc_fixed_rate": "real client: plain, fixed rate",
}
NGINX_DOES = {
    "plain": "proxy_pass, upstream keepalive 64, same forwarding headers",
    "auth": "the same plain proxy (nginx has no JWT or session check)",
    "noauth_401": "`return 401` with a JSON body when `Authorization` is empty",
    "not_found_404": "`return 404` with a JSON body",
    "landing": "a static copy of the page gatehouse rendered (nginx does not render)",
    "asset": "the file from assets/ (sendfile)",
    "fixed_rate": "proxy_pass, paced load",
    "rc_plain": "as plain",
    "rc_auth": "as auth",
    "rc_json": "proxy_pass with `gzip on` for application/json from 1024 bytes, level 6",
    "rc_fixed_rate": "as fixed_rate",
}
IDLE_TARGET_BYTES = 4096


def load_rounds(path):
    rows = []
    with open(path) as f:
        for r in csv.DictReader(f):
            req = int(r["requests"])
            dur = int(r["duration_us"]) / 1e6
            ticks = int(r["cpu_ticks"])
            tck = int(r["clk_tck"])
            cpu_s = ticks / tck
            core_total = int(r["core_total_ticks"]) or 1
            # Kernel time (stime) of the same processes; absent from runs before it was kept.
            sys_s = int(r["sys_ticks"]) / tck if r.get("sys_ticks") else None
            rows.append(
                {
                    "proxy": r["proxy"],
                    "scenario": r["scenario"],
                    "round": int(r["round"]),
                    "requests": req,
                    "seconds": dur,
                    "rps": req / dur if dur else 0.0,
                    "p50_us": int(r["p50_us"]),
                    "p90_us": int(r["p90_us"]),
                    "p99_us": int(r["p99_us"]),
                    "max_us": int(r["max_us"]),
                    "mean_us": float(r["mean_us"]),
                    "socket_errors": int(r["err_socket"]),
                    "non_2xx_3xx": int(r["non2xx3xx"]),
                    "cpu_seconds": cpu_s,
                    "cpu_us_per_request": cpu_s * 1e6 / req if req else None,
                    "kernel_us_per_request": sys_s * 1e6 / req if req and sys_s is not None else None,
                    "user_us_per_request": (cpu_s - sys_s) * 1e6 / req
                    if req and sys_s is not None
                    else None,
                    "proxy_core_util_pct": 100 * cpu_s / dur if dur else 0.0,
                    "core_other_pct": 100
                    * max(0, int(r["core_busy_ticks"]) - ticks)
                    / core_total,
                    "load1": float(r["load1"]),
                    "busy_before_pct": float(r["busy_before_pct"]),
                    "idle_wait_s": int(r["idle_wait_s"]),
                    "started_utc": r["started"],
                    "redis_commands": int(r.get("redis_commands") or 0),
                    "redis_commands_per_request": int(r.get("redis_commands") or 0) / req if req else None,
                }
            )
    return rows


def load_idle(path):
    out = {}
    with open(path) as f:
        for r in csv.DictReader(f):
            n = int(r["connections_open"])
            before, during, after = (int(r[k]) for k in ("rss_before_kib", "rss_open_kib", "rss_after_close_kib"))
            out[r["proxy"]] = {
                "connections_requested": int(r["connections_requested"]),
                "connections_open": n,
                "rss_before_kib": before,
                "rss_open_kib": during,
                "rss_after_close_kib": after,
                "bytes_per_connection": (during - before) * 1024 / n if n else None,
            }
    return out


def summarise(rows):
    """Median (and min, max) over rounds, per scenario and proxy."""
    out = {}
    for r in rows:
        out.setdefault(r["scenario"], {}).setdefault(r["proxy"], []).append(r)
    summary = {}
    for s, per in out.items():
        summary[s] = {}
        for p, rs in per.items():
            d = {"rounds": len(rs)}
            for k in ("rps", "p50_us", "p99_us", "cpu_us_per_request", "proxy_core_util_pct", "core_other_pct",
                      "redis_commands_per_request", "user_us_per_request", "kernel_us_per_request"):
                vals = [r[k] for r in rs if r.get(k) is not None]
                d[k] = statistics.median(vals) if vals else None
                d[k + "_min"] = min(vals) if vals else None
                d[k + "_max"] = max(vals) if vals else None
            d["socket_errors"] = sum(r["socket_errors"] for r in rs)
            d["non_2xx_3xx"] = sum(r["non_2xx_3xx"] for r in rs)
            d["requests"] = sum(r["requests"] for r in rs)
            summary[s][p] = d
    return summary


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt(x, nd=0):
    if x is None:
        return "–"
    return f"{x:,.{nd}f}"


def chart(summary, idle, scenarios, path, title):
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    panels = [
        ("rps", "requests/s (higher is better)", 1.0, axes[0][0]),
        ("p99_us", "p99 latency, ms (lower is better)", 1e-3, axes[0][1]),
        ("cpu_us_per_request", "proxy CPU per request, µs (lower is better)", 1.0, axes[1][0]),
    ]
    names = [LABELS.get(s, s) for s in scenarios]
    width = 0.38
    for key, label, scale, ax in panels:
        for i, p in enumerate(PROXIES):
            xs = [j + (i - 0.5) * width for j in range(len(scenarios))]
            vals, lo, hi = [], [], []
            for s in scenarios:
                d = summary.get(s, {}).get(p, {})
                v = d.get(key)
                vals.append((v or 0) * scale)
                lo.append(((v or 0) - (d.get(key + "_min") or 0)) * scale if v is not None else 0)
                hi.append(((d.get(key + "_max") or 0) - (v or 0)) * scale if v is not None else 0)
            bars = ax.bar(xs, vals, width, yerr=[lo, hi], capsize=3, label=p, color=COLORS[p])
            for b, v, h in zip(bars, vals, hi):
                if v >= 1000:
                    txt = f"{v / 1000:.1f}k"
                else:
                    txt = f"{v:.0f}" if v >= 100 else f"{v:.2f}" if v < 10 else f"{v:.1f}"
                ax.annotate(txt, (b.get_x() + b.get_width() / 2, b.get_height() + h), ha="center",
                            va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
        ax.set_title(label, fontsize=11)
        ax.set_xticks(range(len(scenarios)))
        ax.set_xticklabels(names, rotation=25, ha="right", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.margins(y=0.12)
    ax = axes[1][1]
    vals = [(idle.get(p, {}).get("bytes_per_connection") or 0) / 1024 for p in PROXIES]
    bars = ax.bar(PROXIES, vals, 0.5, color=[COLORS[p] for p in PROXIES])
    for b, v in zip(bars, vals):
        ax.annotate(f"{v:.1f} KiB", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                    va="bottom", fontsize=9, xytext=(0, 2), textcoords="offset points")
    ax.axhline(IDLE_TARGET_BYTES / 1024, color="#c0392b", linestyle="--", linewidth=1,
               label="target ≤ 4 KiB")
    n = max((idle.get(p, {}).get("connections_open") or 0) for p in PROXIES) if idle else 0
    ax.set_title(f"RSS growth per idle keep-alive connection ({n:,} open), KiB", fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    ax.margins(y=0.12)
    ax.legend(fontsize=9)
    handles = [matplotlib.patches.Patch(color=COLORS[p], label=p) for p in PROXIES]
    fig.legend(handles=handles, loc="upper right", ncol=2, fontsize=10, frameon=False)
    fig.suptitle(title, fontsize=12, x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=110)


ANALYSIS_MARK = "<!-- analysis: kept when the report is regenerated -->"


def main():
    if sys.argv[1] == "--from-json":
        # Re-render STEM.md and STEM.png from STEM.json (e.g. after a change to this script).
        stem = sys.argv[2]
        profile_name = sys.argv[3] if len(sys.argv) > 3 else None
        with open(stem + ".json") as f:
            saved = json.load(f)
        meta, rows, idle = saved["meta"], saved["rounds"], saved["idle_memory"]
    else:
        meta_path, rounds_path, idle_path, stem = sys.argv[1:5]
        profile_name = sys.argv[5] if len(sys.argv) > 5 and sys.argv[5] else None
        with open(meta_path) as f:
            meta = json.load(f)
        rows = load_rounds(rounds_path)
        idle = load_idle(idle_path)
    kept = ""
    if os.path.exists(stem + ".md"):
        with open(stem + ".md") as f:
            old = f.read()
        if ANALYSIS_MARK in old:
            kept = old[old.index(ANALYSIS_MARK):]
    summary = summarise(rows)
    scenarios = [s for s in LABELS if s in summary] + [s for s in summary if s not in LABELS]
    base = os.path.basename(stem)

    g = lambda s, p, k: summary.get(s, {}).get(p, {}).get(k)  # noqa: E731
    # (target, this run's value, met: True/False, or None when this run did not measure it)
    targets = []

    def target(name, measured, value, met):
        targets.append((name, value, met) if measured else (name, "not measured in this run", None))

    r = ratio(g("plain", "gatehouse", "cpu_us_per_request"), g("plain", "nginx", "cpu_us_per_request"))
    target("plain-proxy CPU per request ≤ 1.0 × nginx's", r is not None, f"{fmt(r, 2)} ×", r is not None and r <= 1.0)
    r = ratio(g("auth", "gatehouse", "cpu_us_per_request"), g("plain", "nginx", "cpu_us_per_request"))
    target("authenticated proxy CPU per request ≤ 1.3 × nginx's plain proxy", r is not None, f"{fmt(r, 2)} ×",
           r is not None and r <= 1.3)
    gp, np_ = g("fixed_rate", "gatehouse", "p99_us"), g("fixed_rate", "nginx", "p99_us")
    r = ratio(gp, np_)
    target(f"p99 at a fixed offered load (~{meta['fixed_rate']:,} req/s) no worse than nginx's", r is not None,
           f"{fmt(gp)} µs vs {fmt(np_)} µs ({fmt(r, 2)} ×)", r is not None and r <= 1.0)
    # The same targets on what browsers and API clients send (Accept-Encoding, Accept,
    # User-Agent, a cookie).
    r = ratio(g("rc_plain", "gatehouse", "cpu_us_per_request"), g("rc_plain", "nginx", "cpu_us_per_request"))
    target("real clients: plain-proxy CPU per request ≤ 1.0 × nginx's", r is not None, f"{fmt(r, 2)} ×", r is not None and r <= 1.0)
    r = ratio(g("rc_auth", "gatehouse", "cpu_us_per_request"), g("rc_plain", "nginx", "cpu_us_per_request"))
    target("real clients: authenticated proxy CPU per request ≤ 1.3 × nginx's plain proxy", r is not None,
           f"{fmt(r, 2)} ×", r is not None and r <= 1.3)
    gp, np_ = g("rc_fixed_rate", "gatehouse", "p99_us"), g("rc_fixed_rate", "nginx", "p99_us")
    r = ratio(gp, np_)
    target("real clients: p99 at a fixed offered load no worse than nginx's", r is not None,
           f"{fmt(gp)} µs vs {fmt(np_)} µs ({fmt(r, 2)} ×)", r is not None and r <= 1.0)
    b = idle.get("gatehouse", {}).get("bytes_per_connection")
    target("RSS per idle keep-alive connection ≤ 4 KiB", b is not None,
           f"{fmt(b)} B (nginx {fmt(idle.get('nginx', {}).get('bytes_per_connection'))} B)",
           b is not None and b <= IDLE_TARGET_BYTES)

    title = f"gatehouse vs nginx {meta['nginx'].split('/')[-1]} — {meta['date'][:10]}, {meta['machine']} ({meta['nproc']} cores, proxy pinned to one core)"
    chart(summary, idle, scenarios, stem + ".png", title)

    with open(stem + ".json", "w") as f:
        json.dump({"meta": meta, "summary": summary, "idle_memory": idle, "rounds": rows,
                   "targets": [{"target": t, "value": v, "met": m} for t, v, m in targets]}, f, indent=1)

    L = []
    L.append(f"# Load test: gatehouse vs nginx — {meta['date'][:10]}, {meta['machine']}")
    L.append("")
    L.append(f"Produced by `benches/load/run.sh` ({meta['rounds']} rounds of {meta['round_seconds']} s per scenario and proxy, "
             f"interleaved). Chart: [{base}.png]({base}.png); raw numbers: [{base}.json]({base}.json)"
             + (f"; perf profiles: [{profile_name}]({profile_name})" if profile_name else "")
             + f"; response headers of every scenario: [{base}-responses.txt]({base}-responses.txt).")
    L.append("")
    L.append(f"![chart]({base}.png)")
    L.append("")
    L.append("## Results (median of the rounds)")
    L.append("")
    L.append("| scenario | gatehouse req/s | nginx req/s | gatehouse p50 µs | nginx p50 µs | gatehouse p99 µs | nginx p99 µs | gatehouse CPU µs/req | nginx CPU µs/req | CPU ratio |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    def scenario_rows(cells):
        """One table row per scenario: its label, then cells(gatehouse, nginx) of its summary."""
        for s in scenarios:
            gh, ng = summary[s].get("gatehouse", {}), summary[s].get("nginx", {})
            L.append(f"| {LABELS.get(s, s)} | " + " | ".join(cells(gh, ng)) + " |")

    scenario_rows(lambda gh, ng: [
        fmt(gh.get("rps")), fmt(ng.get("rps")), fmt(gh.get("p50_us")), fmt(ng.get("p50_us")),
        fmt(gh.get("p99_us")), fmt(ng.get("p99_us")), fmt(gh.get("cpu_us_per_request"), 1),
        fmt(ng.get("cpu_us_per_request"), 1),
        fmt(ratio(gh.get("cpu_us_per_request"), ng.get("cpu_us_per_request")), 2)])
    L.append("")
    if any(summary[s].get(p, {}).get("kernel_us_per_request") is not None for s in scenarios for p in PROXIES):
        L.append("Where the CPU per request goes: user space (utime) and the kernel (stime: system calls, and the "
                 "loopback delivery a send does for its receiver), medians of the rounds, µs:")
        L.append("")
        L.append("| scenario | gatehouse user | gatehouse kernel | nginx user | nginx kernel | gatehouse kernel ÷ nginx total |")
        L.append("|---|---:|---:|---:|---:|---:|")
        scenario_rows(lambda gh, ng: [
            fmt(gh.get("user_us_per_request"), 1), fmt(gh.get("kernel_us_per_request"), 1),
            fmt(ng.get("user_us_per_request"), 1), fmt(ng.get("kernel_us_per_request"), 1),
            fmt(ratio(gh.get("kernel_us_per_request"), ng.get("cpu_us_per_request")), 2)])
        L.append("")
    L.append("| proxy | idle connections open | VmRSS before | VmRSS with them open | after closing them | growth per connection |")
    L.append("|---|---:|---:|---:|---:|---:|")
    for p in PROXIES:
        d = idle.get(p)
        if d:
            L.append(f"| {p} | {d['connections_open']:,} | {d['rss_before_kib']:,} KiB | {d['rss_open_kib']:,} KiB | "
                     f"{d['rss_after_close_kib']:,} KiB | {fmt(d['bytes_per_connection'])} B |")
    L.append("")
    rc = g("auth", "gatehouse", "redis_commands_per_request")
    if rc is not None:
        L.append(f"Redis commands per authenticated request (gatehouse, counted by Redis over the auth rounds): {rc:.3f}"
                 + (" — the live-session check is answered by gatehouse's in-process session cache, not by a Redis round trip per request."
                    if rc < 0.5 else "."))
        L.append("")
    L.append("## Targets (ratios from this run)")
    L.append("")
    L.append("| target | this run | met |")
    L.append("|---|---|---|")
    for t, v, m in targets:
        L.append(f"| {t} | {v} | {'–' if m is None else 'yes' if m else '**no**'} |")
    L.append("")
    ghp = g("plain", "ghpingora", "cpu_us_per_request")
    ghp_auth = g("auth", "ghpingora", "cpu_us_per_request")
    if ghp is not None or ghp_auth is not None:
        ng = g("plain", "nginx", "cpu_us_per_request")
        lane = "on" if meta.get("native_http1", True) else "off"
        L.append("## The native HTTP/1 lane")
        L.append("")
        L.append(f"gatehouse above runs with `server.native_http1` {lane}. The same gatehouse with it off "
                 "(every request through Pingora's proxy), in the same rounds:")
        L.append("")
        L.append("| scenario | gatehouse CPU µs/req | gatehouse, native_http1 off | × nginx's plain proxy | × nginx's plain proxy, off |")
        L.append("|---|---:|---:|---:|---:|")
        for sc, off in (("plain", ghp), ("auth", ghp_auth)):
            on = g(sc, "gatehouse", "cpu_us_per_request")
            if off is None or on is None:
                continue
            L.append(f"| {LABELS.get(sc, sc)} | {fmt(on, 1)} | {fmt(off, 1)} | {fmt(ratio(on, ng), 2)} | {fmt(ratio(off, ng), 2)} |")
        L.append("")
    floor = g("plain", "pingora", "cpu_us_per_request")
    engine = g("plain", "engine", "cpu_us_per_request")
    if floor is not None or engine is not None:
        L.append("## Floors (plain proxy)")
        L.append("")
        if floor is not None:
            L.append("The same plain-proxy rounds against Pingora 0.9.1's HTTP proxy with nothing of gatehouse in it "
                     "(`examples/bare_pingora.rs`: one upstream, the same five forwarding headers, one current-thread "
                     "worker, mimalloc; no routing, limits, metrics or logs). What gatehouse costs above it is "
                     "gatehouse's own; the floor itself is Pingora's.")
            L.append("")
        if engine is not None:
            L.append("And against an HTTP/1 proxy engine of nginx's shape on Tokio (`examples/tokio_http1.rs`: one "
                     "buffer per connection, the request head forwarded as bytes with the same five forwarding "
                     "headers spliced in, the response head passed through with `X-Request-Id` added, upstream "
                     "keep-alive; one current-thread runtime, mimalloc; no gateway features): what an own engine "
                     "under gatehouse's filters would start from.")
            L.append("")
        L.append("| proxy | req/s | p99 µs | CPU µs/req | user | kernel | × nginx |")
        L.append("|---|---:|---:|---:|---:|---:|---:|")
        ng_cpu = g("plain", "nginx", "cpu_us_per_request")
        for p, name in (("nginx", "nginx"), ("engine", "Tokio HTTP/1 engine"),
                        ("policy", "Tokio engine + gatehouse's policy"), ("pingora", "bare Pingora"),
                        ("gatehouse", "gatehouse"), ("ghpingora", "gatehouse, native_http1 off")):
            if p not in summary["plain"]:
                continue
            d = summary["plain"].get(p, {})
            L.append(f"| {name} | {fmt(d.get('rps'))} | {fmt(d.get('p99_us'))} | {fmt(d.get('cpu_us_per_request'), 1)} | "
                     f"{fmt(d.get('user_us_per_request'), 1)} | {fmt(d.get('kernel_us_per_request'), 1)} | "
                     f"{fmt(ratio(d.get('cpu_us_per_request'), ng_cpu), 2)} |")
        # Above Pingora's floor is gatehouse on Pingora's proxy: with the native lane on, that
        # is the run with it off.
        gh_cpu = g("plain", "ghpingora" if ghp is not None else "gatehouse", "cpu_us_per_request")
        if gh_cpu is not None and floor is not None:
            L.append("")
            L.append(f"gatehouse on Pingora's proxy above the floor: {fmt(gh_cpu - floor, 1)} µs per plain request "
                     f"({fmt(100 * (gh_cpu - floor) / gh_cpu)} % of its cost); the floor alone is "
                     f"{fmt(ratio(floor, ng_cpu), 2)} × nginx.")
        if engine is not None:
            L.append("")
            L.append(f"The Tokio engine: {fmt(engine, 1)} µs per plain request, {fmt(ratio(engine, ng_cpu), 2)} × nginx"
                     + (f", {fmt(ratio(engine, floor), 2)} × bare Pingora." if floor else "."))
            native = g("plain", "gatehouse", "cpu_us_per_request") if ghp is not None else None
            if native is not None:
                L.append("")
                L.append(f"gatehouse on its native lane above the Tokio engine: {fmt(native - engine, 1)} µs per plain "
                         "request (gatehouse's per-request work and its lane's machinery).")
        pol = g("plain", "policy", "cpu_us_per_request")
        pol_auth = g("auth", "policy", "cpu_us_per_request")
        if pol is not None or pol_auth is not None:
            L.append("")
            L.append("**The same engine running gatehouse's own per-request work** (`tokio_http1 … policy gateway.yaml`: "
                     "gatehouse's header map, request id, client ip, path normalisation, route lookup, ip rules, retry "
                     "budget, backend selection with health and breakers, path rewrite, the auth guard with the live-session "
                     "check and identity headers, the breaker's record and the request metrics, called from the gatehouse "
                     "library with gatehouse's configuration, Redis and users) — what gatehouse would cost on an own engine:")
            L.append("")
            L.append("| scenario | engine + policy CPU µs/req | × nginx's plain proxy | target |")
            L.append("|---|---:|---:|---|")
            if pol is not None:
                L.append(f"| plain proxy | {fmt(pol, 1)} | {fmt(ratio(pol, ng_cpu), 2)} | ≤ 1.0 |")
            if pol_auth is not None:
                L.append(f"| JWT + live session | {fmt(pol_auth, 1)} | {fmt(ratio(pol_auth, ng_cpu), 2)} | ≤ 1.3 |")
        L.append("")
    L.append("## What each scenario does")
    L.append("")
    L.append("| scenario | request | gatehouse | nginx |")
    L.append("|---|---|---|---|")
    req = {"plain": "GET /plain", "auth": "GET /auth, `Authorization: Bearer` (HS256)", "noauth_401": "GET /auth, no token",
           "not_found_404": "GET /nothing/here", "landing": "GET /", "asset": "GET /assets/css/site.css",
           "fixed_rate": f"GET /plain, ~{meta['fixed_rate']:,} req/s offered over {meta['fixed_connections']} connections",
           "rc_plain": "GET /plain with a browser's headers (`Accept-Encoding: gzip, deflate, br`, `Accept`, `Accept-Language`, `User-Agent`, a cookie)",
           "rc_auth": "as rc_plain, on /auth with `Authorization: Bearer`",
           "rc_json": "as rc_plain, on /json (a 1,210-byte JSON answer)",
           "rc_fixed_rate": "as rc_plain, paced as fixed_rate"}
    ghd = {"plain": "route → pool → upstream, forwarding headers", "auth": "HS256 JWT verify + live-session check (sessions in Redis, read through gatehouse's in-process session cache), identity headers, proxy",
           "noauth_401": "401 JSON from the auth guard", "not_found_404": "404 JSON (no route)", "landing": "renders landing.html (minijinja)",
           "asset": "served from memory (ETag, Last-Modified)", "fixed_rate": "as plain",
           "rc_plain": "as plain; the answer (3 bytes) is below compression.min_size", "rc_auth": "as auth",
           "rc_json": "as plain, compressing the answer (server.compression: from 1 KiB, level 6)",
           "rc_fixed_rate": "as plain"}
    for s in scenarios:
        L.append(f"| {LABELS.get(s, s)} | {req.get(s, '')} | {ghd.get(s, '')} | {NGINX_DOES.get(s, '')} |")
    L.append("")
    L.append("## Method")
    L.append("")
    L.append(f"- Upstream: nginx `return 200 \"ok\\n\"` (1 worker). Load: `wrk -t1 -c{meta['connections']} -d{meta['round_seconds']}s` "
             f"(keep-alive). Upstream, wrk and Redis share core {meta['load_cpu']}; the proxy under test (gatehouse with "
             f"`server.threads: 1`, or nginx with 1 worker) is alone on core {meta['proxy_cpu']} (`taskset`). Both run with access "
             "logs off, 1000 requests per client keep-alive connection, 60 s keep-alive timeout.")
    L.append("- Rounds: every scenario runs once on each proxy per round (the order alternates between rounds), after a 1 s "
             "warm-up of each. Before each round the harness waits (at most "
             f"{meta['idle_wait_max']} s) until the whole machine is under {meta['idle_busy_pct']} % busy over one second; the "
             "1-minute load average is recorded but not waited for, since the harness's own rounds keep it near 2.")
    L.append("- CPU per request: utime + stime of every process of the proxy (`/proc/PID/stat`, all threads, 10 ms ticks) "
             "over the round, divided by the requests wrk completed. Latency: wrk's percentiles (from writing a request to "
             "reading its whole response).")
    L.append(f"- Fixed offered load: wrk2 is not packaged in Debian, so `benches/load/paced.lua` makes each of "
             f"{meta['fixed_connections']} connections wait a random 0–2×(connections/rate) ms before each request "
             "(closed loop, no coordinated-omission correction: a stall delays later requests instead of queueing them, so "
             "these p99s are lower bounds of what an open-loop generator would see).")
    L.append("- Idle memory: `benches/load/idle_conns.py` opens the connections (256 at a time), sends `GET /nothing/here` on "
             "each (answered by the proxy itself, so no upstream connections are involved), reads the answer and leaves the "
             "connection idle; VmRSS of the proxy (nginx: master + worker) is read before and 2 s after the last answer; "
             "growth ÷ connections still established (`ss`). Kernel socket buffers are not in VmRSS.")
    L.append("")
    L.append("## Machine and versions")
    L.append("")
    L.append(f"- nproc: {meta['nproc']}; kernel: {meta['kernel']}")
    L.append(f"- {meta['nginx']}, {meta['wrk']}, {meta['redis']}, {meta['rustc']}, {meta['gatehouse']} at commit "
             f"`{meta['commit'][:12]}`" + (f" (working tree with {meta['dirty_files']} uncommitted source files: other work in progress)"
                                           if meta.get("dirty_files") else ""))
    L.append("- The machine is shared: other sessions' builds and tests may run at the same time. The per-round table shows "
             "the load before each round and how much of the proxy's core went to other processes during it.")
    L.append("")
    L.append("```")
    L.append(meta["lscpu"].rstrip())
    L.append("```")
    L.append("")
    L.append("## Every round")
    L.append("")
    L.append("| proxy | scenario | round | start (UTC) | req/s | p50 µs | p99 µs | CPU µs/req | proxy core busy | other on proxy core | load1 | machine busy before | waited | non-2xx/3xx | socket errors |")
    L.append("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in sorted(rows, key=lambda r: (scenarios.index(r["scenario"]) if r["scenario"] in scenarios else 99, r["proxy"], r["round"])):
        L.append(f"| {r['proxy']} | {LABELS.get(r['scenario'], r['scenario'])} | {r['round']} | {r['started_utc']} | {fmt(r['rps'])} | "
                 f"{r['p50_us']} | {r['p99_us']} | {fmt(r['cpu_us_per_request'], 1)} | {r['proxy_core_util_pct']:.0f} % | "
                 f"{r['core_other_pct']:.0f} % | {r['load1']:.2f} | {r['busy_before_pct']:.0f} % | {r['idle_wait_s']} s | "
                 f"{r['non_2xx_3xx']} | {r['socket_errors']} |")
    L.append("")
    text = "\n".join(L)
    if kept:
        text += "\n" + kept
    with open(stem + ".md", "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
