#!/usr/bin/env python3
"""The report of bench/compare.sh: a Markdown table, the JSON of every run and
an SVG plot, from the run directory the script filled.

    compare_report.py RUN_DIR OUT_DIR NAME   writes OUT_DIR/NAME.{md,json,svg}

Exit status 3 when a check failed (a resumption that did not resume, errors,
idle connections closed by the server): the files are written anyway, with
the failure in them. Standard library only.
"""
import glob
import json
import os
import statistics
import sys

tmp, out, name = sys.argv[1:]
SERVERS_ORDER = ["nginx", "haproxy", "hitch", "tlsfront"]
TITLE = {"nginx": "nginx", "haproxy": "HAProxy", "hitch": "hitch", "tlsfront": "tlsfront"}
MODE_TITLE = {
    "full12": "full TLS 1.2",
    "full13": "full TLS 1.3",
    "resume-id12": "TLS 1.2 session ID",
    "resume-ticket12": "TLS 1.2 ticket",
    "resume13": "TLS 1.3 ticket (stateless)",
    "resume13-cache": "TLS 1.3 stateful (server cache)",
    "plain": "plain TCP proxy, no TLS (floor)",
}
RESUMING = {"resume-id12", "resume-ticket12", "resume13", "resume13-cache"}

machine = json.load(open(os.path.join(tmp, "machine.json")))
machine["loadavg_after"] = open("/proc/loadavg").read().split()[:3]
stamp = {"revision": machine["revision"], "tree_clean": machine["tree_clean"]}
servers = [s for s in SERVERS_ORDER if s in machine["servers"]]
warnings = []
failed = False


def read_tsv(path):
    if not os.path.exists(path):
        return []
    return [line.rstrip("\n").split("\t") for line in open(path) if line.strip()]


phases = [dict(zip(("phase", "event", "time_utc", "loadavg"), r)) for r in read_tsv(os.path.join(tmp, "phases.tsv"))]
orders = [dict(zip(("phase", "mode", "round", "order"), r)) for r in read_tsv(os.path.join(tmp, "orders.tsv"))]
configs = {}
for f in sorted(glob.glob(os.path.join(tmp, "conf", "*"))):
    configs[os.path.basename(f)] = open(f).read()


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, spec="{:,.0f}"):
    return "—" if x is None else spec.format(x)


def load_dir(sub, parts):
    """Every JSON in RUN_DIR/sub named like a.b.c.json, with the parts of its
    name as fields, stamped with the revision."""
    rs = []
    for f in sorted(glob.glob(os.path.join(tmp, sub, "*.json"))):
        bits = os.path.basename(f)[: -len(".json")].split(".")
        if len(bits) != len(parts):
            continue
        r = json.load(open(f))
        r.update(dict(zip(parts, bits)), **stamp)
        if "round" in r:
            r["round"] = int(r["round"])
        rs.append(r)
    return rs


# --- handshakes ------------------------------------------------------------------
runs = load_dir("runs", ("bench_mode", "server", "round"))
agg = {}
for r in runs:
    agg.setdefault((r["bench_mode"], r["server"]), []).append(r)
summary = {}
for (mode, server), rs in agg.items():
    checked = sum(r["resumption_checked"] for r in rs)
    per_cpu = [r["handshakes_per_server_cpu_s"] for r in rs]
    summary[(mode, server)] = {
        "runs": len(rs),
        "hs_per_s_median": med([r["handshakes_per_s"] for r in rs]),
        "hs_per_s_min": min(r["handshakes_per_s"] for r in rs),
        "hs_per_s_max": max(r["handshakes_per_s"] for r in rs),
        "hs_per_cpu_s_median": med(per_cpu),
        "hs_per_cpu_s_min": min((x for x in per_cpu if x is not None), default=None),
        "hs_per_cpu_s_max": max((x for x in per_cpu if x is not None), default=None),
        "server_cpu_util_median": med([r["server_cpu_util"] for r in rs]),
        "p99_us_median": med([r["handshake_latency_us"]["p99"] for r in rs]),
        "resumed_fraction": (sum(r["resumed"] for r in rs) / checked) if checked else None,
        "resumption_checked": checked,
        "errors": sum(r["errors_total"] for r in rs),
        "error_kinds": sorted({k for r in rs for k in r["errors"]}),
    }
    s = summary[(mode, server)]
    if mode in RESUMING and (s["resumed_fraction"] is None or s["resumed_fraction"] < 1.0):
        warnings.append("RESUMPTION CHECK FAILED: {} {}: resumed {} of {} checked handshakes".format(
            server, mode, sum(r["resumed"] for r in rs), checked))
        failed = True
    if s["errors"]:
        warnings.append("errors: {} {}: {} ({})".format(server, mode, s["errors"], "; ".join(s["error_kinds"])))
        failed = True

modes = [m for m in machine["modes"] if any((m, s) in summary for s in servers)]
if any(k[0] == "plain" for k in summary):
    modes.append("plain")


def best_peer(mode, key):
    vals = [(summary[(mode, s)][key], s) for s in servers if s != "tlsfront" and (mode, s) in summary
            and summary[(mode, s)][key] is not None]
    return max(vals) if vals else (None, None)


def ratio(a, b):
    return None if not a or not b else a / b


lines = []
targets = []
if summary:
    lines += ["## Handshakes per server CPU-second (median of {} rounds)".format(machine["rounds"]), "",
              "| mode | " + " | ".join(TITLE[s] for s in servers) + " | tlsfront ÷ best peer |",
              "|---|" + "---:|" * (len(servers) + 1)]
    for m in modes:
        cells = []
        for s in servers:
            a = summary.get((m, s))
            if a is None:
                cells.append("n/a" if m != "plain" else "")
                continue
            c = fmt(a["hs_per_cpu_s_median"])
            if m in RESUMING and (a["resumed_fraction"] or 0) < 1.0:
                c += " ⚠ resumed {:.1f} %".format(100 * (a["resumed_fraction"] or 0))
            cells.append(c)
        t = summary.get((m, "tlsfront"))
        peer, who = best_peer(m, "hs_per_cpu_s_median")
        r = ratio(t and t["hs_per_cpu_s_median"], peer)
        lines.append("| {} | {} | {} |".format(MODE_TITLE[m], " | ".join(cells),
                                              "—" if r is None else "**{:.2f}** ({})".format(r, TITLE[who])))
        if m != "plain" and r is not None:
            targets.append({"target": "handshakes per server CPU-second >= 1.5x the best peer", "mode": m,
                            "value": r, "best_peer": who, "met": r >= 1.5})
    lines += ["", "## Handshakes per second, closed loop, {} connections at once (server CPU use)".format(
        machine["concurrency"]), "",
        "| mode | " + " | ".join(TITLE[s] for s in servers) + " |", "|---|" + "---:|" * len(servers)]
    for m in modes:
        cells = []
        for s in servers:
            a = summary.get((m, s))
            cells.append("" if a is None and m == "plain" else "n/a" if a is None else "{} ({:.0f} %)".format(
                fmt(a["hs_per_s_median"]), 100 * (a["server_cpu_util_median"] or 0)))
        lines.append("| {} | {} |".format(MODE_TITLE[m], " | ".join(cells)))
    lines += ["", "Resumption check (tlsload: handshakes that resumed / handshakes that had a session to "
              "resume; every one must resume):", "",
              "| mode | " + " | ".join(TITLE[s] for s in servers) + " |", "|---|" + "---|" * len(servers)]
    for m in modes:
        if m not in RESUMING:
            continue
        cells = []
        for s in servers:
            a = summary.get((m, s))
            cells.append("n/a" if a is None else "{:.1f} % of {:,}".format(
                100 * (a["resumed_fraction"] or 0), a["resumption_checked"]))
        lines.append("| {} | {} |".format(MODE_TITLE[m], " | ".join(cells)))
    if "hitch" in servers:
        lines += ["", "hitch n/a: Debian's hitch cannot turn session tickets off, so it has no stateful "
                  "TLS 1.3 resumption; its session IDs live in OpenSSL's per-process cache (built without "
                  "--enable-sessioncache)."]

# --- bulk --------------------------------------------------------------------------
bulk_runs = load_dir("bulk", ("server", "round"))
bulk = {}
for r in bulk_runs:
    for d in r["directions"]:
        bulk.setdefault((d["direction"], r["label"]), []).append(d)
bulk_summary = {k: {"runs": len(v), "mb_per_server_cpu_s_median": med([d["mb_per_server_cpu_s"] for d in v]),
                    "mb_per_s_median": med([d["mb_per_s"] for d in v])} for k, v in bulk.items()}
if bulk_summary:
    lines += ["", "## Bulk through the proxy: MB (10^6 B) per server CPU-second (MB/s), {} x {} MiB per round".format(
        machine["bulk_count"], machine["bulk_bytes"] >> 20), "",
        "| direction | " + " | ".join(TITLE[s] for s in servers) + " | tlsfront ÷ best peer |",
        "|---|" + "---:|" * (len(servers) + 1)]
    for d, title in (("down", "download (upstream → client)"), ("up", "upload (client → upstream)")):
        cells = [("{} ({})".format(fmt(bulk_summary[(d, s)]["mb_per_server_cpu_s_median"]),
                                   fmt(bulk_summary[(d, s)]["mb_per_s_median"])) if (d, s) in bulk_summary else "—")
                 for s in servers]
        peers = [(bulk_summary[(d, s)]["mb_per_server_cpu_s_median"], s) for s in servers
                 if s != "tlsfront" and (d, s) in bulk_summary and bulk_summary[(d, s)]["mb_per_server_cpu_s_median"]]
        t = bulk_summary.get((d, "tlsfront"), {}).get("mb_per_server_cpu_s_median")
        peer, who = max(peers) if peers else (None, None)
        r = ratio(t, peer)
        lines.append("| {} | {} | {} |".format(title, " | ".join(cells),
                                              "—" if r is None else "**{:.2f}** ({})".format(r, TITLE[who])))
        if r is not None:
            targets.append({"target": "bulk MB per server CPU-second >= 1.3x the best peer", "mode": d,
                            "value": r, "best_peer": who, "met": r >= 1.3})

# --- latency -----------------------------------------------------------------------
lat_runs = load_dir("lat", ("bench_mode", "server", "round"))
rates = {r[0]: (r[1], r[2]) for r in read_tsv(os.path.join(tmp, "lat", "rates.tsv"))}
lat = {}
for r in lat_runs:
    lat.setdefault((r["bench_mode"], r["label"]), []).append(r)
lat_summary = {k: {"runs": len(v), "offered_rate": v[0]["offered_rate"],
                   "achieved_rate_median": med([r["handshakes_per_s"] for r in v]),
                   "p50_us_median": med([r["scheduled_latency_us"]["p50"] for r in v]),
                   "p99_us_median": med([r["scheduled_latency_us"]["p99"] for r in v]),
                   "late_starts": sum(r["late_starts"] for r in v),
                   "connections": sum(r["connections_ok"] for r in v),
                   "errors": sum(r["errors_total"] for r in v)} for k, v in lat.items()}
for (m, s), v in lat_summary.items():
    if v["errors"]:
        warnings.append("latency {} {}: {} errors".format(s, m, v["errors"]))
    if v["connections"] and v["late_starts"] > 0.01 * v["connections"]:
        warnings.append("latency {} {}: {} of {} starts late (client short of free loops: the p99 includes "
                        "client queueing)".format(s, m, v["late_starts"], v["connections"]))
if lat_summary:
    lat_modes = [m for m in machine["latency_modes"] if any((m, s) in lat_summary for s in servers)]
    lines += ["", "## Handshake latency at a fixed offered load (70 % of the weakest server's capacity), "
              "p50 / p99 ms from each connection's intended start", "",
              "| mode (offered load) | " + " | ".join(TITLE[s] for s in servers) + " |", "|---|" + "---|" * len(servers)]
    for m in lat_modes:
        rate, who = rates.get(m, ("?", "?"))
        cells = [("{:.2f} / **{:.2f}**".format(lat_summary[(m, s)]["p50_us_median"] / 1000,
                                               lat_summary[(m, s)]["p99_us_median"] / 1000)
                  if (m, s) in lat_summary else "n/a") for s in servers]
        lines.append("| {} ({}/s, 70 % of {}) | {} |".format(MODE_TITLE[m], rate, TITLE.get(who, who), " | ".join(cells)))
        peers = [lat_summary[(m, s)]["p99_us_median"] for s in servers if s != "tlsfront" and (m, s) in lat_summary]
        if (m, "tlsfront") in lat_summary and peers:
            t = lat_summary[(m, "tlsfront")]["p99_us_median"]
            targets.append({"target": "p99 handshake latency at 70 % load <= the best peer's", "mode": m,
                            "value": t / min(peers), "best_peer_p99_us": min(peers), "tlsfront_p99_us": t,
                            "met": t <= min(peers)})

# --- perf ----------------------------------------------------------------------------
perf = {}
for f in sorted(glob.glob(os.path.join(tmp, "perf", "*.json"))):
    mode, server = os.path.basename(f)[:-5].split(".")
    run = json.load(open(f))
    counts = {}
    csv = os.path.join(tmp, "perf", "{}.{}.csv".format(mode, server))
    if os.path.exists(csv):
        for line in open(csv):
            fields = line.strip().split(",")
            if len(fields) >= 3 and not line.startswith("#"):
                try:
                    counts[fields[2]] = int(fields[0])
                except ValueError:
                    counts[fields[2]] = None  # "<not counted>" or "<not supported>"
    n = run["connections_ok"]
    perf[(mode, server)] = {"connections": n, "counts": counts,
                            "per_connection": {k: (v / n if v is not None and n else None) for k, v in counts.items()},
                            **stamp}
if machine["perf_status"] != "ok" and "perf" in machine["phases"]:
    warnings.append("perf: " + machine["perf_status"])
if perf:
    pm = [m for m in machine["perf_modes"] if any((m, s) in perf for s in servers)]
    lines += ["", "## Per connection, from perf tracepoints (a separate {} s run per mode; perf's own cost "
              "is in these runs, not in the tables above)".format(machine["secs"]), "",
              "| mode | " + " | ".join("{} syscalls".format(TITLE[s]) for s in servers)
              + " | tlsfront io_uring_enter | tlsfront io_uring requests |", "|---|" + "---:|" * (len(servers) + 2)]
    for m in pm:
        cells = [fmt(perf.get((m, s), {}).get("per_connection", {}).get("raw_syscalls:sys_enter"), "{:.1f}")
                 for s in servers]
        t = perf.get((m, "tlsfront"), {}).get("per_connection", {})
        enter, req = t.get("syscalls:sys_enter_io_uring_enter"), t.get("io_uring:io_uring_submit_req")
        lines.append("| {} | {} | {} | {} |".format(MODE_TITLE[m], " | ".join(cells), fmt(enter, "{:.1f}"),
                                                   fmt(req, "{:.1f}")))
        if m in RESUMING and enter is not None:
            targets.append({"target": "<= 3 io_uring_enter per resumed connection at concurrency {}".format(
                machine["concurrency"]), "mode": m, "value": enter, "met": enter <= 3})

# --- idle --------------------------------------------------------------------------
idle = {}
for f in sorted(glob.glob(os.path.join(tmp, "idle", "*.json"))):
    r = json.load(open(f))
    r.update(stamp)
    idle[r["label"]] = r
    if r["closed_by_server"]:
        warnings.append("idle {}: the server closed {} of {} idle connections".format(
            r["label"], r["closed_by_server"], r["connections_open"]))
        failed = True
    if r["connections_open"] < r["connections_asked"]:
        warnings.append("idle {}: only {} of {} connections opened: {}".format(
            r["label"], r["connections_open"], r["connections_asked"], r["open_errors"]))
        failed = True
if idle:
    lines += ["", "## {:,} idle TLS 1.3 connections (one request each, fresh server)".format(machine["idle_connections"]), ""]
    if machine.get("idle_note"):
        lines += ["Note: " + machine["idle_note"] + ".", ""]
    lines += [ "| | " + " | ".join(TITLE[s] for s in servers) + " |", "|---|" + "---:|" * len(servers)]

    def row(title, f):
        lines.append("| {} | {} |".format(title, " | ".join(f(idle[s]) if s in idle else "—" for s in servers)))
    row("RssAnon growth per connection (KB = 1000 B)", lambda r: "**{:.1f}**".format(r["rss_anon_per_connection_bytes"] / 1000))
    row("wake-ups/s while idle (voluntary context switches)", lambda r: "{:.1f}".format(r["wakeups_per_s_idle"]["voluntary"]))
    row("… in the second half of the hold", lambda r: "{:.1f}".format(r["wakeups_per_s_idle_second_half"]["voluntary"])
        if r.get("wakeups_per_s_idle_second_half") else "—")
    row("wake-ups/s with no connection", lambda r: "{:.1f}".format(r["wakeups_per_s_without_connections"]["voluntary"]))
    row("server CPU while idle, ms per s", lambda r: "{:.1f}".format(1000 * r["server_cpu_idle_s"] / r["hold_s"]))
    row("closed by the server while idle", lambda r: str(r["closed_by_server"]))
    if "tlsfront" in idle:
        v = idle["tlsfront"]["rss_anon_per_connection_bytes"] / 1000
        targets.append({"target": "memory per idle connection <= 12 KB", "value": v, "met": v <= 12})

# --- survival -------------------------------------------------------------------------
surv = read_tsv(os.path.join(tmp, "survival.tsv"))
survival = []
if surv:
    cells = {(v, m, p): r for v, m, p, r in surv}
    variants = []
    for v, _, _, _ in surv:
        if v not in variants:
            variants.append(v)
    vt = {"nginx": "nginx (ticket key file)", "nginx-nokey": "nginx (default: no key file)", "haproxy": "HAProxy",
          "hitch": "hitch (Debian)", "tlsfront": "tlsfront"}
    mt = {"id12": "TLS 1.2 session ID", "ticket12": "TLS 1.2 ticket", "tls13": "TLS 1.3 ticket",
          "tls13cache": "TLS 1.3 stateful"}
    lines += ["", "## Resumption survival: a session taken before the event, resumed after it "
              "(no event / reload / restart)", "",
              "| session | " + " | ".join(vt.get(v, v) for v in variants) + " |", "|---|" + "---|" * len(variants)]
    for m in ("id12", "ticket12", "tls13", "tls13cache"):
        row = []
        for v in variants:
            row.append(" / ".join(cells.get((v, m, p), "—") for p in ("baseline", "reload", "restart")))
        lines.append("| {} | {} |".format(mt[m], " | ".join(row)))
    survival = [{"server": v, "mechanism": m, "event": p, "resumed": r, **stamp} for v, m, p, r in surv]
    for v, m, p, r in surv:
        if p == "baseline" and r not in ("yes", "n/a"):
            warnings.append("survival {} {}: a session did not resume even without an event ({})".format(v, m, r))

# --- targets, header, files -------------------------------------------------------------
if targets:
    lines += ["", "## Targets (issue 12), this run", "", "| target | mode | tlsfront | met |", "|---|---|---:|---|"]
    for t in targets:
        val = "{:.2f}".format(t["value"])
        if "KB" in t["target"]:
            val = "{:.1f} KB".format(t["value"])
        elif "io_uring_enter" in t["target"]:
            val = "{:.1f}".format(t["value"])
        elif "latency" in t["target"]:
            val = "{:.2f} ms vs {:.2f} ms".format(t["tlsfront_p99_us"] / 1000, t["best_peer_p99_us"] / 1000)
        else:
            val += "x"
        lines.append("| {} | {} | {} | {} |".format(t["target"], t.get("mode", ""), val,
                                                  "met" if t["met"] else "**missed**"))
if warnings:
    lines += ["", "## Checks that failed or need a look", ""] + ["- " + w for w in warnings]

la = lambda x: " ".join(x)
phase_la = "; ".join("{} {} {} ({})".format(p["phase"], p["event"], p["time_utc"], p["loadavg"]) for p in phases)
header = [
    "# tlsfront, nginx, HAProxy, hitch: {}{}".format(machine["date"], " (DRAFT)" if machine["draft"] else ""), "",
    "- revision **{}**, tree {}; tlsfront binary sha256 {}…".format(
        machine["revision"], "clean" if machine["tree_clean"] else "**with uncommitted changes** ({} files)".format(
            len(machine["dirty_files"])), machine["tlsfront_sha256_16"]),
    "- machine: {}, {} CPUs, kernel {}; {}".format(machine["cpu_model"], machine["cpus"], machine["kernel"], machine["layout"]),
    "- load average before {}, after {}; per phase: {}".format(la(machine["loadavg_before"]), la(machine["loadavg_after"]), phase_la),
    "- {}; {}; {}; {}".format(machine["versions"]["nginx"], machine["versions"]["haproxy"],
                              machine["versions"]["hitch"], machine["versions"]["openssl"]),
    "- runs: {} rounds x {:g} s per mode and server, the server order shuffled per round; {} connections at once; "
    "{} B request, {} B response through `tlsload upstream`; one worker on CPU 0, client and upstream on CPU 1{}".format(
        machine["rounds"], machine["secs"], machine["concurrency"], machine["request_bytes"], machine["response_bytes"],
        "; perf: " + machine["perf_status"] if machine["perf_status"] != "ok" else ""),
    "- same ECDSA P-256 certificate, X25519, AES-128-GCM for all; nginx `ssl_session_cache shared:SSL:64m` + "
    "`ssl_session_ticket_key`; HAProxy `tune.ssl.cachesize 200000` + `tls-ticket-keys`; hitch as Debian builds it "
    "(no shared cache, OpenSSL's ticket key); tlsfront's shared cache and ticket ring. Configurations in the JSON.",
    "",
]
text = "\n".join(header + lines) + "\n"
print(text)
os.makedirs(out, exist_ok=True)
open(os.path.join(out, name + ".md"), "w").write(text)
doc = {
    "machine": machine, "phases": phases, "orders": orders, "configs": configs,
    "summary": [dict(mode=k[0], server=k[1], **v, **stamp) for k, v in sorted(summary.items())],
    "bulk_summary": [dict(direction=k[0], server=k[1], **v, **stamp) for k, v in sorted(bulk_summary.items())],
    "latency_summary": [dict(mode=k[0], server=k[1], **v, **stamp) for k, v in sorted(lat_summary.items())],
    "perf": [dict(mode=k[0], server=k[1], **v) for k, v in sorted(perf.items())],
    "idle": [idle[s] for s in servers if s in idle],
    "survival": survival, "targets": targets, "warnings": warnings,
    "runs": runs, "bulk_runs": bulk_runs, "latency_runs": lat_runs,
}
json.dump(doc, open(os.path.join(out, name + ".json"), "w"), indent=1)

# --- SVG: per mode, one bar per server: handshakes per server CPU-second and handshakes/s
COLORS = {"nginx": "#009639", "haproxy": "#1a5e9a", "hitch": "#c77c02", "tlsfront": "#d62728"}
panels = [("hs_per_cpu_s", "handshakes per server CPU-second"), ("hs_per_s", "handshakes/s (closed loop)")]
if summary:
    W, H, top, bottom, left = 1100, 330, 58, 52, 70
    svg = ['<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="12">'.format(
        W, H * len(panels) + 24), '<rect width="100%" height="100%" fill="white"/>']
    for pi, (key, title) in enumerate(panels):
        y0 = pi * H
        vals = [summary[(m, s)][key + "_max"] or 0 for m in modes for s in servers if (m, s) in summary]
        vmax = (max(vals) if vals else 1) * 1.12 or 1
        ph, pw = H - top - bottom, W - left - 20
        svg.append('<text x="{}" y="{}" font-size="14" font-weight="bold">{}</text>'.format(left, y0 + 20, title))
        svg.append('<text x="{}" y="{}" fill="#555">median of {} rounds, whiskers min–max; server on 1 CPU (1 worker); '
                   'revision {}{}</text>'.format(left, y0 + 38, machine["rounds"], machine["revision"],
                                                 "" if machine["tree_clean"] else " (dirty tree)"))
        step = 10 ** max(0, len(str(int(vmax))) - 1)
        for mult in (1, 2, 5):
            if vmax / (step * mult) <= 8:
                step *= mult
                break
        v = 0
        while v <= vmax:
            y = y0 + top + ph - v / vmax * ph
            svg.append('<line x1="{}" x2="{}" y1="{:.1f}" y2="{:.1f}" stroke="#ddd"/>'.format(left, left + pw, y, y))
            svg.append('<text x="{}" y="{:.1f}" text-anchor="end">{:,}</text>'.format(left - 6, y + 4, int(v)))
            v += step
        gw = pw / max(1, len(modes))
        bw = gw * 0.8 / len(servers)
        for mi, m in enumerate(modes):
            for si, s in enumerate(servers):
                a = summary.get((m, s))
                if not a or a[key + "_median"] is None:
                    continue
                x = left + mi * gw + gw * 0.1 + si * bw
                h = a[key + "_median"] / vmax * ph
                svg.append('<rect x="{:.1f}" y="{:.1f}" width="{:.1f}" height="{:.1f}" fill="{}"/>'.format(
                    x, y0 + top + ph - h, bw - 2, h, COLORS[s]))
                cx = x + (bw - 2) / 2
                ylo = y0 + top + ph - (a[key + "_min"] or 0) / vmax * ph
                yhi = y0 + top + ph - (a[key + "_max"] or 0) / vmax * ph
                svg.append('<line x1="{0:.1f}" x2="{0:.1f}" y1="{1:.1f}" y2="{2:.1f}" stroke="black"/>'.format(cx, ylo, yhi))
            svg.append('<text x="{:.1f}" y="{}" text-anchor="middle">{}</text>'.format(
                left + mi * gw + gw / 2, y0 + top + ph + 16, MODE_TITLE[m].replace(" (floor)", "")[:30]))
        for si, s in enumerate(servers):
            lx = left + pw - 90 * len(servers) + si * 90
            svg.append('<rect x="{}" y="{}" width="12" height="12" fill="{}"/>'.format(lx, y0 + 28, COLORS[s]))
            svg.append('<text x="{}" y="{}">{}</text>'.format(lx + 16, y0 + 38, TITLE[s]))
    svg.append('<text x="{}" y="{}" fill="#555" font-size="11">{}; kernel {}; load average before {}, after {}.</text>'.format(
        left, H * len(panels) + 12, machine["cpu_model"], machine["kernel"], la(machine["loadavg_before"]),
        la(machine["loadavg_after"])))
    svg.append("</svg>")
    open(os.path.join(out, name + ".svg"), "w").write("\n".join(svg) + "\n")
print("wrote {0}/{1}.md, {1}.json{2}".format(out, name, ", {}.svg".format(name) if summary else ""))
sys.exit(3 if failed else 0)
