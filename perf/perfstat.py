#!/usr/bin/env python3
"""Number crunching for perf/run (stdlib only).

  perfstat.py tcp FILE            iperf3 -J (TCP) -> "rx_bps rx_bytes retransmits"
  perfstat.py udp FILE            iperf3 -J (UDP) -> "lost_percent rx_bps"
  perfstat.py ping FILE           ping output     -> "n median p99 max" (ms)
  perfstat.py tunnel DIR NAME     DIR/records     -> one JSON object (stdout)
  perfstat.py report RUN.json RESULTS.md [--record]
                                  prints the table; with --record also
                                  writes/replaces the run's section in RESULTS.md

DIR/records holds one line per measurement, written by perf/run:
  meta <key> <value...>
  tcp1 <rx_bps> <rx_bytes> <retransmits>      one line per repetition
  tcp4 <rx_bps> <rx_bytes> <retransmits>
  cpu1 <ticks> <rx_bytes>                     tunnel processes, around a tcp1 rep
  cpu4 <ticks> <rx_bytes>
  udp  <offered_mbps> <lost_percent> <rx_bps> <pass 0|1>
  error <text...>
Ping outputs are DIR/ping-idle.txt and DIR/ping-load-<rep>.txt.
"""
import glob
import json
import os
import re
import statistics
import sys


def iperf_end(path):
    with open(path) as f:
        doc = json.load(f)
    if "error" in doc and "end" not in doc:
        raise ValueError(doc["error"])
    return doc["end"]


def cmd_tcp(path):
    end = iperf_end(path)
    rx = end["sum_received"]
    retr = end.get("sum_sent", {}).get("retransmits", 0)
    print("%.0f %d %d" % (rx["bits_per_second"], rx["bytes"], retr))


def cmd_udp(path):
    end = iperf_end(path)
    rx = end.get("sum_received") or end["sum"]
    lost = rx.get("lost_percent", end.get("sum", {}).get("lost_percent", 100.0))
    print("%.4f %.0f" % (lost, rx["bits_per_second"]))


def ping_rtts(paths):
    rtts = []
    for p in paths:
        try:
            text = open(p).read()
        except OSError:
            continue
        rtts += [float(m.group(1)) for m in re.finditer(r"time=([0-9.]+) ms", text)]
    return sorted(rtts)


def pct(sorted_vals, p):
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, int(round(p / 100.0 * (len(sorted_vals) - 1)))))
    return sorted_vals[k]


def ping_summary(paths):
    r = ping_rtts(paths)
    if not r:
        return {"n": 0, "median_ms": None, "p99_ms": None, "max_ms": None}
    return {"n": len(r), "median_ms": round(pct(r, 50), 3),
            "p99_ms": round(pct(r, 99), 3), "max_ms": round(r[-1], 3)}


def cmd_ping(path):
    s = ping_summary([path])
    print("%d %s %s %s" % (s["n"], s["median_ms"], s["p99_ms"], s["max_ms"]))


def spread(vals):
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals),
            "runs": vals}


def cmd_tunnel(d, name):
    recs = {}
    meta = {}
    errors = []
    try:
        lines = open(os.path.join(d, "records")).read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "meta":
            meta[parts[1]] = " ".join(parts[2:])
        elif parts[0] == "error":
            errors.append(" ".join(parts[1:]))
        else:
            recs.setdefault(parts[0], []).append(parts[1:])
    out = {"name": name, "meta": meta, "errors": errors}
    for kind in ("tcp1", "tcp4"):
        gbps = [float(r[0]) / 1e9 for r in recs.get(kind, [])]
        out[kind + "_gbps"] = spread([round(g, 3) for g in gbps])
        out[kind + "_retransmits"] = [int(r[2]) for r in recs.get(kind, [])]
    for kind in ("cpu1", "cpu4"):
        rows = recs.get(kind, [])
        ticks = sum(float(r[0]) for r in rows)
        nbytes = sum(float(r[1]) for r in rows)
        hz = float(meta.get("clk_tck", "100"))
        if rows and nbytes > 0 and meta.get("cpu_pids"):
            out[kind + "_cpu_s_per_gb"] = round((ticks / hz) / (nbytes / 1e9), 3)
        else:
            out[kind + "_cpu_s_per_gb"] = None
    probes = [{"offered_mbps": int(r[0]), "lost_percent": float(r[1]),
               "rx_gbps": round(float(r[2]) / 1e9, 3), "pass": r[3] == "1"}
              for r in recs.get("udp", [])]
    out["udp_probes"] = probes
    ok = [p for p in probes if p["pass"]]
    best = max(ok, key=lambda p: p["offered_mbps"]) if ok else None
    # The rate reported is what the receiver got at the highest passing probe.
    out["udp_max_gbps"] = best["rx_gbps"] if best else None
    out["udp_offered_mbps_at_max"] = best["offered_mbps"] if best else None
    bg = [{"before": r[0], "busy_pct": int(r[1]), "waited_s": int(r[2])} for r in recs.get("bg", [])]
    out["background"] = bg
    out["ping_idle"] = ping_summary([os.path.join(d, "ping-idle.txt")])
    out["ping_load"] = ping_summary(sorted(glob.glob(os.path.join(d, "ping-load-*.txt"))))
    json.dump(out, sys.stdout)
    print()


def fmt(v, nd=2):
    if v is None:
        return "–"
    if abs(v) >= 100:
        return "%.0f" % v
    if abs(v) >= 10:
        return "%.1f" % v
    return ("%%.%df" % nd) % v


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "–"
    return "%.2f" % (a / b)


def med(t, key):
    s = t.get(key)
    return s["median"] if s else None


def table(run):
    tunnels = run["tunnels"]
    by = {t["name"]: t for t in tunnels}
    raw = by.get("veth")
    wg = by.get("wireguard-go")
    hdr = ["tunnel", "TCP×1 Gbit/s (min–max)", "/veth", "/wg-go",
           "TCP×4 Gbit/s (min–max)", "/veth", "/wg-go",
           "UDP <1% loss Gbit/s (rx)", "/wg-go", "ping idle ms", "ping loaded ms med / p99 / max",
           "CPU s/GB ×1", "CPU s/GB ×4"]
    rows = []
    for t in tunnels:
        row = [t["name"]]
        for kind in ("tcp1_gbps", "tcp4_gbps"):
            s = t.get(kind)
            if s:
                row.append("%s (%s–%s)" % (fmt(s["median"]), fmt(s["min"]), fmt(s["max"])))
            else:
                row.append("failed")
            row.append(ratio(med(t, kind), med(raw, kind) if raw else None))
            row.append(ratio(med(t, kind), med(wg, kind) if wg else None))
        row.append(fmt(t.get("udp_max_gbps")) if t.get("udp_probes") else "–")
        row.append(ratio(t.get("udp_max_gbps"), wg.get("udp_max_gbps") if wg else None))
        pi, pl = t["ping_idle"], t["ping_load"]
        row.append(fmt(pi["median_ms"], 3))
        row.append("%s / %s / %s" % (fmt(pl["median_ms"], 3), fmt(pl["p99_ms"], 3), fmt(pl["max_ms"], 3)))
        row.append(fmt(t.get("cpu1_cpu_s_per_gb")))
        row.append(fmt(t.get("cpu4_cpu_s_per_gb")))
        rows.append(row)
    lines = ["| " + " | ".join(hdr) + " |", "|" + "|".join(["---"] * len(hdr)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def section(run):
    m = run["machine"]
    out = []
    out.append("## %s — %s" % (run["date"], run["label"]))
    out.append("")
    out.append("- machine: %s, %s cores, kernel %s" % (m["cpu"], m["cores"], m["kernel"]))
    out.append("- ringlink: %s (commit %s; binary %s)" % (run["versions"].get("ringlink", "?"), run.get("commit", "?"),
                                                       run["versions"].get("ringlink-binary", "?")))
    out.append("- tools: " + ", ".join("%s %s" % (k, v) for k, v in sorted(run["versions"].items())
                                       if not k.startswith("ringlink")))
    out.append("- command: `%s`" % run["command"])
    out.append("- settings: %s s per TCP run, %s repetitions (median, min–max), UDP search ≤ %s probes × %s s, %s-byte UDP payload; wall time %s s"
               % (run["settings"]["time"], run["settings"]["reps"], run["settings"]["udp_probes"],
                  run["settings"]["udp_time"], run["settings"]["udp_len"], run.get("wall_s", "?")))
    out.append("")
    out.append(table(run))
    out.append("")
    notes = run.get("notes", [])
    for t in run["tunnels"]:
        meta = t.get("meta", {})
        bg = [b["busy_pct"] for b in t.get("background", [])]
        if bg:
            notes.append("%s: background %d / %d %% (waited %d s); loadavg %s at start, %s at end"
                         % (t["name"], statistics.median(bg), max(bg),
                            sum(b["waited_s"] for b in t["background"]),
                            meta.get("loadavg_start", "?"), meta.get("loadavg_end", "?")))
        elif "loadavg_start" in meta:
            notes.append("%s: loadavg %s at start, %s at end" % (t["name"], meta["loadavg_start"], meta.get("loadavg_end", "?")))
        if "direct_after_ms" in meta:
            notes.append("%s: status showed the peer direct %.1f s after the clients started"
                         % (t["name"], float(meta["direct_after_ms"]) / 1000.0))
        if "turn_ceiling" in meta:
            notes.append("%s: coturn alone, same sitting (examples/turn_ceiling: two allocations, ChannelData one way, no ringlink): %s"
                         % (t["name"], meta["turn_ceiling"]))
        for k in sorted(meta):
            if k.startswith("status_"):
                notes.append("%s: client %s after the run: %s" % (t["name"], k[7:], meta[k]))
        if t.get("udp_offered_mbps_at_max"):
            notes.append("%s: UDP probes (offered Mbit/s → loss %%): %s" % (t["name"], ", ".join(
                "%d → %.2f" % (p["offered_mbps"], p["lost_percent"]) for p in t.get("udp_probes", []))))
        for e in t.get("errors", []):
            notes.append("%s: %s" % (t["name"], e))
    if notes:
        out.append("Notes:")
        out.append("")
        out += ["- " + n for n in notes]
        out.append("")
    return "\n".join(out)


def cmd_report(run_path, results_md, record):
    run = json.load(open(run_path))
    sec = section(run)
    print(sec)
    if not record:
        return
    begin = "<!-- perf-run %s begin -->" % run["date"]
    end = "<!-- perf-run %s end -->" % run["date"]
    block = begin + "\n" + sec.rstrip() + "\n" + end + "\n"
    try:
        text = open(results_md).read()
    except OSError:
        text = ("# ringlink performance results\n\n"
                "Written by `perf/run` (one section per date; a rerun on the same date "
                "replaces that date's section). Raw numbers: `perf/results/<date>.json`.\n\n")
    pat = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.S)
    if pat.search(text):
        text = pat.sub(lambda _m: block, text)
    else:
        text = text.rstrip("\n") + "\n\n" + block
    with open(results_md + ".tmp", "w") as f:
        f.write(text)
    os.rename(results_md + ".tmp", results_md)


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd = argv[1]
    try:
        if cmd == "tcp":
            cmd_tcp(argv[2])
        elif cmd == "udp":
            cmd_udp(argv[2])
        elif cmd == "ping":
            cmd_ping(argv[2])
        elif cmd == "tunnel":
            cmd_tunnel(argv[2], argv[3])
        elif cmd == "report":
            cmd_report(argv[2], argv[3], "--record" in argv[4:])
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except (OSError, ValueError, KeyError, TypeError) as e:
        print("perfstat %s: %s" % (cmd, e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
