#!/usr/bin/env python3
"""Tables for bench/cluster-cost.sh and bench/cluster-scale.sh from their raw JSON.

  python3 bench/cluster-report.py cost  DIR   # DIR/<config>.json from cluster-cost.sh
  python3 bench/cluster-report.py scale DIR   # DIR/<design>-<k>.json from cluster-scale.sh
"""
import json
import os
import sys

COST = [
    ("sockgate-1", "sockgate, one instance, no Redis"),
    ("relay-base", "sockgate A→B, relay (BASELINE build)"),
    ("relay", "sockgate A→B, relay"),
    ("relay-plain", "sockgate A→B, relay, plain pub/sub"),
    ("adapter", "sockgate A→B, adapter"),
    ("node-1", "Node socket.io, one instance, no Redis"),
    ("node", "Node A→B, @socket.io/redis-adapter"),
]


def ms(us):
    if us is None or us != us:
        return "—"
    # The load generator's histogram ends at 2 s: anything beyond is in its last bucket.
    return "≥ 2000" if us >= 2_000_000 else f"{us / 1000:.1f}"


def cpu_cols(cpu):
    """A, B, Redis, whole: a single instance fills A only."""
    us = [c["us"] for c in cpu]
    if len(us) == 1:
        return [f"{us[0]:.1f}", "—", "—", f"**{us[0]:.1f}**"]
    return [f"{x:.1f}" for x in us] + [f"**{sum(us):.1f}**"]


def split(cpu):
    return " / ".join(f'{c["user_us"]:.0f}+{c["sys_us"]:.0f}' for c in cpu)


def cost(d):
    print(open(os.path.join(d, "params.txt")).read().strip())
    print()
    print("| config | phase | rate asked | sent | delivered | p50 / p99 ms | A µs | B µs | Redis µs | whole µs | user+sys µs (A / B / Redis) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    best = {}
    for key, label in COST:
        p = os.path.join(d, f"{key}.json")
        if not os.path.exists(p):
            continue
        o = json.load(open(p))
        for r in o.get("fixed", []):
            behind = "" if r["achieved"] >= 0.95 * r["rate"] else f' (paced {r["achieved"]:,.0f}/s)'
            print(f'| {label} | fixed | {r["rate"]:,.0f}/s | {r["sent"]:,}{behind} | {r["delivered"]:,} | '
                  f'{ms(r["p50_us"])} / {ms(r["p99_us"])} | ' + " | ".join(cpu_cols(r["cpu"])) + f' | {split(r["cpu"])} |')
        lad = o.get("ladder")
        if lad:
            ok = [s for s in lad["steps"] if s.get("pass")]
            best[key] = lad["best_rate"]
            if ok:
                r = max(ok, key=lambda s: s["rate"])
                cap = " (cap)" if lad["capped"] else ""
                print(f'| {label} | sustained: highest passing{cap} | **{r["rate"]:,.0f}/s** | {r["sent"]:,} | {r["delivered"]:,} | '
                      f'{ms(r["p50_us"])} / {ms(r["p99_us"])} | ' + " | ".join(cpu_cols(r["cpu"])) + f' | {split(r["cpu"])} |')
            last = lad["steps"][-1] if lad["steps"] else None
            if last and not lad["capped"] and not last.get("pass"):
                r = last  # the step (after its retry) that ended the ladder
                why = []
                if r["delivered"] < r["sent"]:
                    why.append(f'{r["sent"] - r["delivered"]:,} lost')
                if r["achieved"] < 0.95 * r["rate"]:
                    why.append(f'paced {r["achieved"]:,.0f}/s')
                if r["p50_us"] == r["p50_us"] and r["p50_us"] > lad["p50_ms_max"] * 1000:
                    why.append("p50 over")
                print(f'| {label} | sustained: failed twice, ended ({", ".join(why) or "?"}) | {r["rate"]:,.0f}/s | {r["sent"]:,} | {r["delivered"]:,} | '
                      f'{ms(r["p50_us"])} / {ms(r["p99_us"])} | ' + " | ".join(cpu_cols(r["cpu"])) + f' | {split(r["cpu"])} |')
        f = o.get("flood")
        if f:
            print(f'| {label} | flood {f["count"]:,}: published {f["publish_rate"]:,.0f}/s, delivered {f["delivered_rate"]:,.0f}/s | — | '
                  f'{f["sent"]:,} | {f["delivered"]:,} ({f["delivered_pct"]:.1f} %) | {ms(f["p50_us"])} / {ms(f["p99_us"])} | '
                  + " | ".join(cpu_cols(f["cpu"])) + f' | {split(f["cpu"])} |')
    if best:
        print()
        print("Sustained (p50 ≤ {} ms, all delivered, pace kept): ".format(
            json.load(open(os.path.join(d, next(k for k, _ in COST if k in best) + ".json")))["ladder"]["p50_ms_max"])
            + ", ".join(f"{k} {v:,.0f}/s" for k, v in best.items()))


def scale(d):
    print(open(os.path.join(d, "params.txt")).read().strip())
    print()
    print("| design | instances | per-user: sent / delivered | p50 / p99 ms | µs per message (instance 1, 2, 3 / Redis) | whole µs | broadcast: last delivery p50 / p99 ms | µs per recipient (instances / Redis) | whole µs per recipient | lost |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for design in ("sockgate", "node"):
        for k in (1, 2, 3):
            p = os.path.join(d, f"{design}-{k}.json")
            if not os.path.exists(p):
                continue
            o = json.load(open(p))
            r = o["fixed"][0]
            b = o.get("broadcast")
            per = lambda cpu: ", ".join(f'{c["us"]:.1f}' for c in cpu[:-1]) + f' / {cpu[-1]["us"]:.1f}'
            row = [("sockgate" if design == "sockgate" else "Node + redis-adapter"), str(k),
                   f'{r["sent"]:,} / {r["delivered"]:,}', f'{ms(r["p50_us"])} / {ms(r["p99_us"])}',
                   per(r["cpu"]), f'**{sum(c["us"] for c in r["cpu"]):.1f}**']
            if b:
                row += [f'{b["p50_ms"]:.1f} / {b["p99_ms"]:.1f}', per(b["cpu_per_recipient"]),
                        f'**{sum(c["us"] for c in b["cpu_per_recipient"]):.2f}**', str(b["lost"])]
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    {"cost": cost, "scale": scale}[sys.argv[1]](sys.argv[2])
