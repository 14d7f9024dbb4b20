#!/usr/bin/env python3
"""Observer for test_nat_matrix.sh: decides "direct" per pair of NAT lab
nodes from what the routers forward, not from ringlink alone.

Every router namespace has a table inet nm_count (written by the test) whose
forward-hook rules carry comments:
  from-<node>   large UDP (ip length > 1100, i.e. the test's pings, never a
                heartbeat) arriving on the WAN from <node>'s router and
                forwarded into the LAN: data that came straight from the peer
                and reached the host;
  relay-up / relay-down
                TCP to / from the server's WebSocket port: everything the
                server relays for this node crosses these two rules.

watch <spec> <out>:  while the test's pings run, polls every node's
    `ringlink status --json` and every router's counters (in parallel; a
    poll takes ~50 ms, then 0.1 s of sleep) and records, per pair, the first poll at which both ends list
    each other with path "direct" AND both routers' from-<peer> counters grew
    since the previous poll. The time is counted from the pair's first ping
    (spec t0_ms) to the end of that poll: an upper bound, late by up to a
    ping interval (0.2 s, the counters must grow) plus one poll period (the
    poll periods are recorded).
verify <spec> <out>: afterwards, with the watch pings ended, pings each pair
    again (10 x 1200 bytes, 0.1 s apart) in batches whose routers are
    disjoint, so each router's relay counters move only for its own pair,
    and records per pair: replies, large UDP forwarded each way, relay bytes
    through each router.

The spec (JSON, written by the test): ringlink, nodes {name: {sock, vip,
router_ns, host_ns}}, pairs [{a, b, t0_ms}], window_s.
"""
import concurrent.futures as cf
import json
import re
import subprocess
import sys
import time

PING_COUNT = 10
PING_SIZE = 1200


def now_ms():
    return int(time.time() * 1000)


def run(argv, timeout):
    """stdout of argv, or None when it fails or outlives timeout."""
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (subprocess.TimeoutExpired, OSError):
        return None
    return p.stdout if p.returncode == 0 else None


def counters(router_ns):
    """{comment: (packets, bytes)} of the router's nm_count table."""
    out = run(["ip", "netns", "exec", router_ns, "nft", "-j", "list", "table", "inet", "nm_count"], 5)
    res = {}
    if out is None:
        return res
    try:
        items = json.loads(out)["nftables"]
    except (ValueError, KeyError):
        return res
    for it in items:
        rule = it.get("rule") if isinstance(it, dict) else None
        if not rule or "comment" not in rule:
            continue
        for e in rule.get("expr", []):
            if isinstance(e, dict) and "counter" in e:
                c = e["counter"]
                res[rule["comment"]] = (c.get("packets", 0), c.get("bytes", 0))
    return res


def paths(ringlink, sock):
    """{peer vip: path} from the node's status, {} when it does not answer."""
    out = run([ringlink, "status", "--socket", sock, "--json"], 5)
    if out is None:
        return {}
    try:
        return {p["vip"]: p["path"] for p in json.loads(out)["peers"]}
    except (ValueError, KeyError, TypeError):
        return {}


def relay_bytes(c):
    return c.get("relay-up", (0, 0))[1] + c.get("relay-down", (0, 0))[1]


def watch(spec, out):
    nodes, pairs = spec["nodes"], spec["pairs"]
    end = max(p["t0_ms"] for p in pairs) + spec["window_s"] * 1000
    prev = {}  # (pair index, side) -> from-<peer> packets at the last poll
    polls = []
    for p in pairs:
        p.update(t_direct_ms=None, status_direct_ms=None, last_paths=None)
    pool = cf.ThreadPoolExecutor(max_workers=8)
    # Bounded by the window and by a count: each round sleeps 0.1 s.
    for _ in range(int(spec["window_s"] / 0.1) + 10):
        open_pairs = [i for i, p in enumerate(pairs) if p["t_direct_ms"] is None]
        if not open_pairs or now_ms() > end:
            break
        t_start = now_ms()
        names = sorted({pairs[i][s] for i in open_pairs for s in ("a", "b")})
        st = {n: pool.submit(paths, spec["ringlink"], nodes[n]["sock"]) for n in names}
        ct = {n: pool.submit(counters, nodes[n]["router_ns"]) for n in names}
        st = {n: f.result() for n, f in st.items()}
        ct = {n: f.result() for n, f in ct.items()}
        t_end = now_ms()
        polls.append(t_end - t_start)
        for i in open_pairs:
            p = pairs[i]
            a, b = p["a"], p["b"]
            pa = st[a].get(nodes[b]["vip"], "-")
            pb = st[b].get(nodes[a]["vip"], "-")
            p["last_paths"] = [pa, pb]
            both = pa == "direct" and pb == "direct"
            if both and p["status_direct_ms"] is None:
                p["status_direct_ms"] = t_end - p["t0_ms"]
            grew = True
            for side, me, peer in ((0, a, b), (1, b, a)):
                n = ct[me].get("from-" + peer, (0, 0))[0]
                if n <= prev.get((i, side), 0):
                    grew = False
                prev[(i, side)] = n
            if both and grew:
                p["t_direct_ms"] = t_end - p["t0_ms"]
        time.sleep(0.1)
    pool.shutdown()
    polls.sort()
    res = {
        "pairs": pairs,
        "polls": len(polls),
        "poll_ms_median": polls[len(polls) // 2] if polls else None,
        "poll_ms_max": polls[-1] if polls else None,
    }
    with open(out, "w") as f:
        json.dump(res, f, indent=1)


def batches(pairs):
    """Greedy split into batches in which no node appears twice."""
    left, out = list(range(len(pairs))), []
    while left:
        used, batch, rest = set(), [], []
        for i in left:
            a, b = pairs[i]["a"], pairs[i]["b"]
            if a in used or b in used:
                rest.append(i)
            else:
                used.update((a, b))
                batch.append(i)
        out.append(batch)
        left = rest
    return out


def ping_replies(text):
    m = re.search(r"(\d+) received", text or "")
    return int(m.group(1)) if m else 0


def verify(spec, out):
    nodes, pairs = spec["nodes"], spec["pairs"]
    res = [None] * len(pairs)
    pool = cf.ThreadPoolExecutor(max_workers=8)
    for batch in batches(pairs):
        names = sorted({pairs[i][s] for i in batch for s in ("a", "b")})
        before = dict(zip(names, pool.map(lambda n: counters(nodes[n]["router_ns"]), names)))
        procs = {}
        for i in batch:
            a, b = pairs[i]["a"], pairs[i]["b"]
            argv = ["ip", "netns", "exec", nodes[a]["host_ns"], "ping", "-n", "-q",
                    "-c", str(PING_COUNT), "-i", "0.1", "-s", str(PING_SIZE), "-W", "1",
                    nodes[b]["vip"]]
            procs[i] = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        texts = {}
        for i, pr in procs.items():
            try:
                texts[i], _ = pr.communicate(timeout=PING_COUNT * 0.1 + 10)
            except subprocess.TimeoutExpired:
                pr.kill()
                texts[i], _ = pr.communicate()
        # Pings that got no answer in time are still counted as sent.
        time.sleep(0.2)
        after = dict(zip(names, pool.map(lambda n: counters(nodes[n]["router_ns"]), names)))
        st = dict(zip(names, pool.map(lambda n: paths(spec["ringlink"], nodes[n]["sock"]), names)))
        for i in batch:
            a, b = pairs[i]["a"], pairs[i]["b"]

            def delta(node, key, k=0):
                return after[node].get(key, (0, 0))[k] - before[node].get(key, (0, 0))[k]

            res[i] = {
                "replies": ping_replies(texts[i]),
                "sent": PING_COUNT,
                "udp_ab": delta(b, "from-" + a),
                "udp_ba": delta(a, "from-" + b),
                "relay_a": relay_bytes(after[a]) - relay_bytes(before[a]),
                "relay_b": relay_bytes(after[b]) - relay_bytes(before[b]),
                "paths": [st[a].get(nodes[b]["vip"], "-"), st[b].get(nodes[a]["vip"], "-")],
                "relay_if_relayed": 2 * PING_COUNT * (PING_SIZE + 28),
            }
    pool.shutdown()
    with open(out, "w") as f:
        json.dump(res, f, indent=1)


def main():
    if len(sys.argv) != 4 or sys.argv[1] not in ("watch", "verify"):
        print("usage: nat_matrix.py watch|verify SPEC OUT", file=sys.stderr)
        sys.exit(2)
    with open(sys.argv[2]) as f:
        spec = json.load(f)
    (watch if sys.argv[1] == "watch" else verify)(spec, sys.argv[3])


main()
