#!/usr/bin/env python3
"""Turns a bench/run.sh output directory into the results section of BENCHMARKS.md, the chart
bench/chart.svg and bench/results.json. Standard library only.

    python3 bench/report.py target/bench/<stamp> [--quick]

With --quick nothing in the repository is touched: the section and chart go to the output
directory, and the table is printed.
"""
import glob
import json
import os
import platform
import re
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def med(xs):
    xs = [x for x in xs if x is not None and x == x]
    return statistics.median(xs) if xs else None


def load_json(path):
    with open(path) as f:
        return json.load(f)


def to_ms(v, unit):
    return float(v) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def parse_wrk(path):
    text = open(path).read()
    out = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    out["rps"] = float(m.group(1)) if m else None
    for p in ("50", "99"):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        out[f"p{p}"] = to_ms(*m.groups()) if m else None
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    out["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors:(.*)", text)
    out["errors"] = m.group(1).strip() if m else ""
    return out


def wrk_med(out, pattern):
    runs = [parse_wrk(p) for p in sorted(glob.glob(os.path.join(out, pattern)))]
    if not runs:
        return None
    return {
        "runs": len(runs),
        "rps": med([r["rps"] for r in runs]),
        "p50": med([r["p50"] for r in runs]),
        "p99": med([r["p99"] for r in runs]),
        "non2xx": sum(r["non2xx"] for r in runs),
        "errors": [r["errors"] for r in runs if r["errors"]],
    }


def sockets(out, design, phase="sockets"):
    runs = [load_json(p) for p in sorted(glob.glob(os.path.join(out, f"{phase}-{design}-*.json")))]
    if not runs:
        return None
    levels = sorted({lv["n"] for r in runs for lv in r["levels"]})
    by_n = {}
    for n in levels:
        lvs = [lv for r in runs for lv in r["levels"] if lv["n"] == n]
        by_n[n] = {
            "rss_per_socket_kib": med([lv["rss_per_socket_kib"] for lv in lvs]),
            "connect_rate": med([lv["connect_rate"] for lv in lvs]),
            "bcast_p50_ms": med([lv["bcast_p50_ms"] for lv in lvs]),
            "bcast_p99_ms": med([lv["bcast_p99_ms"] for lv in lvs]),
            "bcast_cpu_us": med([lv["bcast_cpu_us_per_recipient"] for lv in lvs]),
            "bcast_lost": sum(lv["bcast_lost"] for lv in lvs),
            "connect_failures": sum(lv["connect_failures"] for lv in lvs),
        }
    first = [r["levels"][0] for r in runs]
    # Connect rate over the whole ramp from 0 to the largest level.
    ramp = [max(lv["n"] for lv in r["levels"]) / sum(lv["connect_secs"] for lv in r["levels"]) for r in runs]

    def pub(key):
        xs = [r[key] for r in runs if key in r]
        if not xs:
            return None
        best = [x["best_rate"] for x in xs]
        return {"best": med(best), "all": best, "capped": any(x["capped"] for x in xs)}

    return {
        "runs": len(runs),
        "levels": by_n,
        "connect_rate_ramp": med(ramp),
        "connect_rate_first": med([lv["connect_rate"] for lv in first]),
        "rss0_kib": med([r["rss0_kib"] for r in runs]),
        "single": pub("publish_single"),
        "batch": pub("publish_batch"),
    }


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        return ""


def machine(out):
    mem_kib = int(re.search(r"MemTotal:\s+(\d+)", open("/proc/meminfo").read()).group(1))
    model = sh("lscpu | sed -n 's/^Model name: *//p'") or platform.processor()
    start = open(os.path.join(out, "uptime-start.txt")).read().strip() if os.path.exists(os.path.join(out, "uptime-start.txt")) else ""
    end = open(os.path.join(out, "uptime-end.txt")).read().strip() if os.path.exists(os.path.join(out, "uptime-end.txt")) else ""
    vf = os.path.join(out, "version.txt")
    return {
        "sockgate": open(vf).read().strip() if os.path.exists(vf) else "unknown",
        "nproc": sh("nproc"),
        "cpu": model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "node": sh("node --version"),
        "nginx": sh("nginx -v 2>&1 | sed 's/.*: //'"),
        "wrk": sh("wrk -v 2>&1 | head -1 | awk '{print $2}'"),
        "rustc": sh("rustc --version"),
        "load_start": re.sub(r".*load average: ", "", start),
        "load_end": re.sub(r".*load average: ", "", end),
    }


def f(x, nd=1, unit=""):
    if x is None:
        return "–"
    if isinstance(x, float) and x != x:
        return "–"
    if abs(x) >= 1000 and nd <= 1:
        return f"{x:,.0f}{unit}"
    return f"{x:.{nd}f}{unit}"


def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def verdict(ok):
    return "—" if ok is None else ("**met**" if ok else "**missed**")


# ------------------------------------------------------------------------------------------------
# Chart
# ------------------------------------------------------------------------------------------------
def chart(sg, sd, sg2, sd2, path):
    W, H, PW = 900, 360, 400
    memory, broadcast = "rss_per_socket_kib", "bcast_p50_ms"
    # (legend, data, colour, dashed, panels it is drawn in)
    series = [("sockgate", sg, "#d9480f", False, {memory, broadcast}),
              ("Node socket.io (seed)", sd, "#1c7ed6", False, {memory, broadcast}),
              ("sockgate, both cores", sg2, "#d9480f", True, {broadcast}),
              ("Node, both cores", sd2, "#1c7ed6", True, {broadcast})]
    series = [x for x in series if x[1]]
    panels = [("Memory per idle authenticated socket (KiB)", memory),
              ("Broadcast to all N: last delivery, median (ms)", broadcast)]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
             'font-family="sans-serif" font-size="12">',
             f'<rect width="{W}" height="{H}" fill="white"/>']
    for pi, (title, key) in enumerate(panels):
        x0, y0, pw, ph = 60 + pi * (PW + 60), 40, PW - 40, H - 110
        pts = {name: sorted((n, v[key]) for n, v in d["levels"].items() if v[key] is not None)
               for name, d, _, _, keys in series if key in keys}
        xs = [n for p in pts.values() for n, _ in p] or [1]
        ys = [v for p in pts.values() for _, v in p] or [1]
        xmax, ymax = max(xs) * 1.05, max(ys) * 1.15 or 1
        sx = lambda n: x0 + pw * n / xmax
        sy = lambda v: y0 + ph - ph * v / ymax
        parts.append(f'<text x="{x0}" y="{y0 - 15}" font-weight="bold">{title}</text>')
        parts.append(f'<line x1="{x0}" y1="{y0 + ph}" x2="{x0 + pw}" y2="{y0 + ph}" stroke="#333"/>')
        parts.append(f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y0 + ph}" stroke="#333"/>')
        for i in range(5):
            v = ymax * i / 4
            parts.append(f'<line x1="{x0}" y1="{sy(v):.1f}" x2="{x0 + pw}" y2="{sy(v):.1f}" stroke="#eee"/>')
            parts.append(f'<text x="{x0 - 6}" y="{sy(v) + 4:.1f}" text-anchor="end">{v:.1f}</text>')
        for n in sorted(set(xs)):
            parts.append(f'<text x="{sx(n):.1f}" y="{y0 + ph + 16}" text-anchor="middle">{n:,}</text>')
        parts.append(f'<text x="{x0 + pw / 2}" y="{y0 + ph + 34}" text-anchor="middle">N sockets</text>')
        for si, (name, _, color, dashed, _) in enumerate(series):
            p = pts.get(name)
            if not p:
                continue
            d = " ".join(f"{sx(n):.1f},{sy(v):.1f}" for n, v in p)
            dash = ' stroke-dasharray="6 4"' if dashed else ""
            parts.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
            for n, v in p:
                parts.append(f'<circle cx="{sx(n):.1f}" cy="{sy(v):.1f}" r="3.5" fill="{color}"/>')
                dy = -6 if si % 2 == 0 else 16
                # Dashed series label to the left of their points, solid ones to the right.
                tx, anchor = (sx(n) - 6, "end") if dashed else (sx(n) + 5, "start")
                parts.append(f'<text x="{tx:.1f}" y="{sy(v) + dy:.1f}" fill="{color}" '
                             f'text-anchor="{anchor}">{v:.1f}</text>')
    for i, (name, _, color, dashed, _) in enumerate(series):
        x = 60 + i * 210
        if dashed:
            parts.append(f'<line x1="{x}" y1="{H - 21}" x2="{x + 14}" y2="{H - 21}" stroke="{color}" '
                         'stroke-width="2" stroke-dasharray="4 2"/>')
        else:
            parts.append(f'<rect x="{x}" y="{H - 28}" width="14" height="14" fill="{color}"/>')
        parts.append(f'<text x="{x + 20}" y="{H - 16}">{name}</text>')
    parts.append("</svg>")
    with open(path, "w") as fh:
        fh.write("\n".join(parts) + "\n")


# ------------------------------------------------------------------------------------------------
def main():
    out = sys.argv[1]
    quick = "--quick" in sys.argv
    sg, sd = sockets(out, "sockgate"), sockets(out, "seed")
    sg2, sd2 = sockets(out, "sockgate", "bothcores"), sockets(out, "seed", "bothcores")
    both = sorted((sg2 or {"levels": {}})["levels"].keys())
    ssr = {k: wrk_med(out, f"ssr-{k}-*.txt".replace("-*", "-[0-9]*")) for k in []}
    ssr = {}
    for d in ("seed", "sockgate"):
        for cond in ("idle", "load"):
            for mode in ("sat", "paced"):
                ssr[(d, cond, mode)] = wrk_med(out, f"ssr-{d}-{cond}-{mode}-*.txt")
    direct = wrk_med(out, "ssr-direct-sat-*.txt")
    direct_paced = wrk_med(out, "ssr-direct-paced-*.txt")
    streams = {d: load_json(p) for d in ("seed", "sockgate")
               for p in [os.path.join(out, f"stream-{d}.json")] if os.path.exists(p)}
    proxy = {k: wrk_med(out, f"proxy-{k}-*.txt") for k in ("sockgate", "nginx", "direct")}
    own = {k: wrk_med(out, f"page-own-{k}-*.txt") for k in ("direct", "sockgate")}
    m = machine(out)
    levels = sorted((sg or {"levels": {}})["levels"].keys())
    big = [n for n in levels if n >= 10000] or levels

    L = []
    L.append(f"Measured {sh('date -u +%Y-%m-%d')} by `bench/run.sh{' --quick' if quick else ''}` "
             f"(medians of {sg['runs'] if sg else '?'} runs). Raw data: `bench/results.json`.\n")
    L.append("**Machine:** " + f"{m['nproc']} cores ({m['cpu']}), {m['memory_gib']} GiB RAM, Linux {m['kernel']}; "
             f"Node {m['node']}, nginx {m['nginx']}, wrk {m['wrk']}, {m['rustc']}. "
             f"Load average at start: {m['load_start']}; at end: {m['load_end']}.\n")
    L.append(f"sockgate build: commit {m['sockgate']} (release profile).\n")
    L.append("Servers on core 0 (`taskset -c 0`: sockgate and the Node app share it), load generators on core 1, except in the both-cores broadcast table.\n")

    # Sockets table
    L.append("### Sockets: memory, connect rate, broadcast\n")
    L.append("| | " + " | ".join(f"sockgate N={n:,}" for n in big) + " | " + " | ".join(f"Node N={n:,}" for n in big) + " |")
    L.append("|---|" + "---|" * (2 * len(big)))

    def row(label, key, nd=1):
        cells = []
        for d in (sg, sd):
            for n in big:
                v = (d or {"levels": {}})["levels"].get(n, {}).get(key)
                cells.append(f(v, nd))
        L.append(f"| {label} | " + " | ".join(cells) + " |")

    row("RSS per idle authenticated socket (KiB)", "rss_per_socket_kib", 2)
    row("broadcast to all: last delivery p50 (ms)", "bcast_p50_ms", 1)
    row("broadcast to all: last delivery p99 (ms)", "bcast_p99_ms", 1)
    row("server CPU per recipient (µs)", "bcast_cpu_us", 2)
    row("connect rate at this level (sockets/s)", "connect_rate", 0)
    L.append("")
    L.append(f"Authenticated connect rate, 0 → {max(levels) if levels else '?':,} sockets: sockgate "
             f"**{f(sg and sg['connect_rate_ramp'], 0)}/s**, Node socket.io **{f(sd and sd['connect_rate_ramp'], 0)}/s** "
             f"(sockgate calls the app's `/api/session` once per new cookie; the seed checks the session in-process). "
             f"Broadcasts lost: sockgate {sum(v['bcast_lost'] for v in sg['levels'].values()) if sg else '–'}, "
             f"Node {sum(v['bcast_lost'] for v in sd['levels'].values()) if sd else '–'}.\n")
    if levels and len(levels) > len(big):
        L.append("All levels (RSS KiB/socket; broadcast last-delivery p50 ms): " + "; ".join(
            f"N={n:,}: sockgate {f(sg['levels'][n]['rss_per_socket_kib'], 2)} / {f(sg['levels'][n]['bcast_p50_ms'], 1)}"
            + (f", Node {f(sd['levels'].get(n, {}).get('rss_per_socket_kib'), 2)} / {f(sd['levels'].get(n, {}).get('bcast_p50_ms'), 1)}" if sd else "")
            for n in levels) + "\n")

    if both:
        L.append("### Broadcast when the server may use both cores\n")
        L.append("Each server on cores 0–1 (`taskset -c 0,1`; the load generator stays on core 1). Node runs "
                 "JavaScript on one thread; sockgate's runtime has one worker per core.\n")
        L.append("| | " + " | ".join(f"sockgate N={n:,}" for n in both) + " | " + " | ".join(f"Node N={n:,}" for n in both) + " |")
        L.append("|---|" + "---|" * (2 * len(both)))
        for label, key, nd in (("broadcast to all: last delivery p50 (ms)", "bcast_p50_ms", 1),
                               ("broadcast to all: last delivery p99 (ms)", "bcast_p99_ms", 1),
                               ("server CPU per recipient (µs)", "bcast_cpu_us", 2)):
            cells = [f((d or {"levels": {}})["levels"].get(n, {}).get(key), nd) for d in (sg2, sd2) for n in both]
            L.append(f"| {label} | " + " | ".join(cells) + " |")
        L.append(f"\nBroadcasts lost: sockgate {sum(v['bcast_lost'] for v in sg2['levels'].values())}, "
                 f"Node {sum(v['bcast_lost'] for v in sd2['levels'].values()) if sd2 else '–'}.\n")

    L.append("### Per-user publish: highest sustained rate with p99 publish→deliver ≤ 50 ms\n")
    L.append("| | sockgate | Node socket.io (seed) | ratio |")
    L.append("|---|---|---|---|")
    for key, label in (("single", "single publishes, one keep-alive connection (msg/s)"),
                       ("batch", "batches of 100, one keep-alive connection (msg/s)")):
        a, b = (sg or {}).get(key), (sd or {}).get(key)
        cap = " (ladder cap)" if a and a["capped"] else ""
        L.append(f"| {label} | {f(a and a['best'], 0)}{cap} | {f(b and b['best'], 0)} | "
                 f"{f(ratio(a and a['best'], b and b['best']), 2)}× |")
    L.append(f"\nBoth servers get the same requests: `POST /publish` / `POST /publish/batch` over a Unix socket "
             f"(for the seed, an endpoint in the Node process that calls `io.to('user:'+id).emit`). "
             f"A step passes when every message arrives, the publisher keeps the pace (≥ 95 %), and p99 ≤ 50 ms; "
             f"rates double until a step fails, then two bisection steps. Runs: sockgate "
             f"{(sg or {}).get('single', {}) and sg['single']['all']} / {(sg or {}).get('batch', {}) and sg['batch']['all']}, "
             f"Node {(sd or {}).get('single', {}) and sd['single']['all']} / {(sd or {}).get('batch', {}) and sd['batch']['all']}.\n")

    L.append(f"### The app under realtime load (SSR page, ~17 KB)\n")
    sn = streams.get("sockgate", {}).get("n") or streams.get("seed", {}).get("n")
    sr = streams.get("sockgate", {}).get("rate") or streams.get("seed", {}).get("rate")
    L.append(f"Realtime load: {f(sn, 0)} connected sockets receiving {f(sr, 0)} per-user messages/s "
             f"(batches of 50). `sat` = wrk 16 connections flat out; `paced` = wrk 8 connections each waiting 10 ms "
             f"between requests (a steady, non-saturating load).\n")
    L.append("| | req/s (sat) | p50 ms (sat) | p99 ms (sat) | req/s (paced) | p50 ms (paced) | p99 ms (paced) |")
    L.append("|---|---|---|---|---|---|---|")
    for d, dn in (("seed", "seed (socket.io in the app)"), ("sockgate", "app behind sockgate")):
        for cond in ("idle", "load"):
            s, p = ssr.get((d, cond, "sat")), ssr.get((d, cond, "paced"))
            L.append(f"| {dn}, {'idle' if cond == 'idle' else 'under realtime load'} | {f(s and s['rps'], 0)} | "
                     f"{f(s and s['p50'], 2)} | {f(s and s['p99'], 2)} | {f(p and p['rps'], 0)} | "
                     f"{f(p and p['p50'], 2)} | {f(p and p['p99'], 2)} |")
    for d in ("seed", "sockgate"):
        s = streams.get(d)
        if s:
            L.append(f"\nStream during the {d} runs: {s['delivered']:,} of {s['sent']:,} messages delivered, "
                     f"publish→deliver p50 {f(s['p50_us'] / 1e3, 2)} ms, p99 {f(s['p99_us'] / 1e3, 2)} ms.")
    L.append("")

    L.append("### Proxy\n")
    L.append("| | req/s | p50 ms | p99 ms |")
    L.append("|---|---|---|---|")
    via = ssr.get(("sockgate", "idle", "sat"))
    via_paced = ssr.get(("sockgate", "idle", "paced"))
    for w, label in ((proxy.get("direct"), "fast upstream, direct (reference)"),
                     (proxy.get("sockgate"), "fast upstream through sockgate"),
                     (proxy.get("nginx"), "fast upstream through nginx (1 worker, keepalive 64)"),
                     (own["direct"], "Node SSR page, direct (app on its own core)"),
                     (own["sockgate"], "Node SSR page through sockgate (each on its own core)"),
                     (direct, "Node SSR page, direct (one shared core, sat)"),
                     (via, "Node SSR page through sockgate (one shared core, sat)"),
                     (direct_paced, "Node SSR page, direct (one shared core, paced)"),
                     (via_paced, "Node SSR page through sockgate (one shared core, paced)")):
        L.append(f"| {label} | {f(w and w['rps'], 0)} | {f(w and w['p50'], 2)} | {f(w and w['p99'], 2)} |")
    L.append("\nwrk: 64 connections for the fast upstream (which runs on core 1 with wrk), 16 for the SSR page; "
             "with each on its own core, the app runs on core 1 and sockgate and wrk on core 0.\n")

    # Targets
    L.append("### Targets\n")
    L.append("| target | measured | |")
    L.append("|---|---|---|")
    nmax = max(levels) if levels else None
    mem = sg and nmax and sg["levels"][nmax]["rss_per_socket_kib"]
    memn = sd and nmax and sd["levels"].get(nmax, {}).get("rss_per_socket_kib")
    L.append(f"| memory per idle socket ≤ 10 KiB | {f(mem, 2)} KiB at N={nmax:,} (Node {f(memn, 2)} KiB; "
             f"{f(ratio(mem, memn), 2)}×) | {verdict(None if mem is None else mem <= 10)} |")
    for n in big:
        a = sg and sg["levels"][n]["bcast_p50_ms"]
        b = sd and sd["levels"].get(n, {}).get("bcast_p50_ms")
        r = ratio(a, b)
        L.append(f"| broadcast last delivery ≤ 0.7× Node (N={n:,}, p50, one core each) | {f(r, 2)}× ({f(a, 1)} vs {f(b, 1)} ms) | "
                 f"{verdict(None if r is None else r <= 0.7)} |")
    for n in both:
        a = sg2["levels"][n]["bcast_p50_ms"]
        b = sd2 and sd2["levels"].get(n, {}).get("bcast_p50_ms")
        r = ratio(a, b)
        L.append(f"| broadcast last delivery ≤ 0.7× Node (N={n:,}, p50, both cores each) | {f(r, 2)}× ({f(a, 1)} vs {f(b, 1)} ms) | "
                 f"{verdict(None if r is None else r <= 0.7)} |")
    for key, want in (("batch", 5), ("single", 2)):
        r = ratio(sg and sg[key] and sg[key]["best"], sd and sd[key] and sd[key]["best"])
        L.append(f"| per-user publish, {key} ≥ {want}× Node | {f(r, 2)}× | {verdict(None if r is None else r >= want)} |")
    for mode in ("paced", "sat"):
        idle, load, seed = ssr.get(("sockgate", "idle", mode)), ssr.get(("sockgate", "load", mode)), ssr.get(("seed", "load", mode))
        r = ratio(load and load["p99"], idle and idle["p99"])
        L.append(f"| SSR p99 behind sockgate under load ≤ 1.2× idle ({mode}) | {f(r, 2)}× ({f(load and load['p99'], 2)} vs "
                 f"{f(idle and idle['p99'], 2)} ms) | {verdict(None if r is None else r <= 1.2)} |")
        better = None if not (load and seed) else load["p99"] < seed["p99"]
        L.append(f"| … and better than the seed's under load ({mode}) | {f(load and load['p99'], 2)} vs "
                 f"{f(seed and seed['p99'], 2)} ms | {verdict(better)} |")
    r = ratio(proxy["sockgate"] and proxy["sockgate"]["rps"], proxy["nginx"] and proxy["nginx"]["rps"])
    L.append(f"| proxy ≥ 1.2× nginx req/s | {f(r, 2)}× | {verdict(None if r is None else r >= 1.2)} |")
    r = ratio(own["sockgate"] and own["sockgate"]["rps"], own["direct"] and own["direct"]["rps"])
    L.append(f"| Node page through sockgate ≥ 97 % of direct (each on its own core) | {f(r and r * 100, 1)} % | "
             f"{verdict(None if r is None else r >= 0.97)} |")
    r = ratio(via and via["rps"], direct and direct["rps"])
    L.append(f"| Node page through sockgate ≥ 97 % of direct (both on one core) | {f(r and r * 100, 1)} % | "
             f"{verdict(None if r is None else r >= 0.97)} |")
    L.append("\n![memory per socket and broadcast time vs N](bench/chart.svg)\n")
    section = "\n".join(L)

    results = {"machine": m, "sockgate": sg, "seed": sd, "sockgate_both_cores": sg2, "seed_both_cores": sd2,
               "ssr": {"-".join(k): v for k, v in ssr.items()}, "ssr_direct": direct, "ssr_direct_paced": direct_paced, "page_own_cores": own, "streams": streams, "proxy": proxy,
               "quick": quick}
    print(section)
    if quick:
        with open(os.path.join(out, "section.md"), "w") as fh:
            fh.write(section)
        chart(sg, sd, sg2, sd2, os.path.join(out, "chart.svg"))
        json.dump(results, open(os.path.join(out, "results.json"), "w"), indent=1, default=str)
        return
    chart(sg, sd, sg2, sd2, os.path.join(ROOT, "bench", "chart.svg"))
    json.dump(results, open(os.path.join(ROOT, "bench", "results.json"), "w"), indent=1, default=str)
    path = os.path.join(ROOT, "BENCHMARKS.md")
    doc = open(path).read() if os.path.exists(path) else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in doc:
        doc += f"\n{BEGIN}\n{END}\n"
    pre, rest = doc.split(BEGIN, 1)
    post = rest.split(END, 1)[1] if END in rest else ""
    with open(path, "w") as fh:
        fh.write(pre + BEGIN + "\n" + section + "\n" + END + post)


if __name__ == "__main__":
    main()
