#!/usr/bin/env python3
"""Numbered, content-checked UDP flows for the netns tests (test_fast_*).

  udp_seq.py recv ADDR PORT OUT [--idle S] [--timeout S] [--ack-every N]
  udp_seq.py send ADDR PORT [--flows F] [--count N] [--sizes B[,B...]]
                  [--pps P] [--burst B] [--timeout S] [--swap-every K]

send: F flows, one UDP socket (own source port) each, interleaved: seq 0 of
every flow, then seq 1, ... up to N-1, paced at P datagrams per second per
flow (0 = as fast as possible), in bursts of --burst rounds (default 1:
evenly spaced). Datagram seq i of a flow is sizes[i % len]
bytes: a 16-byte header (b"RLSQ", flow, seq, length) and a body that is a
pseudo-random function of (flow, seq), so any corruption, truncation or mixed
up fragment is detected. At the end every flow sends an END (b"RLEN", flow,
N) three times. Prints one JSON line: per flow its source port and the
number sent, send errors, and acks drained. --swap-every K sends seqs K-1 and
K-2 of each block in the wrong order (a self-test of the receiver's check).

recv: binds ADDR:PORT, creates OUT.ready, then counts per flow (keyed by
header flow id; its source address must stay the same): received,
reorders (a seq not greater than the highest seen so far), duplicates,
corrupt datagrams, the highest seq, the END count, and datagrams per size.
With --ack-every N it sends a small datagram back to a flow's source every N
datagrams of that flow (reverse traffic, as TCP ACKs or RTCP would). Ends
once every flow that was seen has sent its END and --idle/4 s passed, or after
--idle s without a datagram (once one arrived), or at --timeout; writes a
JSON summary to OUT (atomically).
"""
import argparse
import json
import os
import random
import select
import socket
import struct
import sys
import time

HDR = struct.Struct("!4sIII")
MAGIC, END, ACK = b"RLSQ", b"RLEN", b"RLAK"


def body(flow, seq, n):
    return random.Random((flow << 32) | seq).randbytes(n)


def datagram(flow, seq, size):
    size = max(size, HDR.size)
    return HDR.pack(MAGIC, flow, seq, size) + body(flow, seq, size - HDR.size)


def send(a):
    sizes = [int(s) for s in a.sizes.split(",")]
    socks = []
    for _ in range(a.flows):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        s.connect((a.addr, a.port))
        socks.append(s)
    sent = [0] * a.flows
    errors = 0
    acks = 0
    t0 = time.monotonic()
    deadline = t0 + a.timeout

    def drain():
        nonlocal acks
        for s in socks:
            while True:
                try:
                    d = s.recv(2048, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    # e.g. ECONNREFUSED from an ICMP error: counted on send.
                    break
                if d[:4] == ACK:
                    acks += 1

    order = list(range(a.count))
    if a.swap_every > 1:
        for i in range(a.swap_every - 1, a.count, a.swap_every):
            order[i - 1], order[i] = order[i], order[i - 1]
    for k, seq in enumerate(order):
        if a.pps > 0 and k % a.burst == 0:
            wait = t0 + k / a.pps - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        if time.monotonic() > deadline:
            break
        size = sizes[seq % len(sizes)]
        for f, s in enumerate(socks):
            try:
                s.send(datagram(f, seq, size))
                sent[f] += 1
            except OSError:
                errors += 1
        if k % 64 == 0:
            drain()
    for _ in range(3):
        for f, s in enumerate(socks):
            try:
                s.send(HDR.pack(END, f, sent[f], HDR.size))
            except OSError:
                errors += 1
        time.sleep(0.05)
    drain()
    print(json.dumps({
        "flows": [{"flow": f, "sport": s.getsockname()[1], "sent": sent[f]} for f, s in enumerate(socks)],
        "send_errors": errors,
        "acks": acks,
        "secs": round(time.monotonic() - t0, 3),
    }), flush=True)
    return 0


def recv(a):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((a.addr, a.port))
    open(a.out + ".ready", "w").close()
    flows = {}
    junk = 0
    t0 = time.monotonic()
    first = last = None
    while True:
        now = time.monotonic()
        if now - t0 > a.timeout:
            break
        if last is not None:
            if now - last > a.idle:
                break
            if flows and all(f["end"] is not None for f in flows.values()) and now - last > a.idle / 4:
                break
        r, _, _ = select.select([s], [], [], 0.05)
        if not r:
            continue
        d, src = s.recvfrom(1 << 17)
        last = time.monotonic()
        if first is None:
            first = last
        if len(d) < HDR.size:
            junk += 1
            continue
        magic, flow, seq, size = HDR.unpack_from(d)
        if magic not in (MAGIC, END):
            junk += 1
            continue
        f = flows.setdefault(flow, {
            "src": "%s:%d" % src, "received": 0, "reorders": 0, "dups": 0,
            "corrupt": 0, "max_seq": -1, "end": None, "bytes": 0,
            "src_changes": 0, "sizes": {}, "first_reorder": None, "seen": set(),
        })
        if "%s:%d" % src != f["src"]:
            f["src_changes"] += 1
        if magic == END:
            f["end"] = seq
            continue
        if size != len(d) or d[HDR.size:] != body(flow, seq, len(d) - HDR.size):
            f["corrupt"] += 1
            continue
        if seq in f["seen"]:
            f["dups"] += 1
        elif seq <= f["max_seq"]:
            f["reorders"] += 1
            if f["first_reorder"] is None:
                f["first_reorder"] = [seq, f["max_seq"]]
        f["seen"].add(seq)
        f["received"] += 1
        f["bytes"] += len(d)
        f["sizes"][len(d)] = f["sizes"].get(len(d), 0) + 1
        f["max_seq"] = max(f["max_seq"], seq)
        if a.ack_every and f["received"] % a.ack_every == 0:
            try:
                s.sendto(HDR.pack(ACK, flow, seq, HDR.size), src)
            except OSError:
                pass
    for f in flows.values():
        del f["seen"]
    out = {
        "flows": {str(k): v for k, v in sorted(flows.items())},
        "junk": junk,
        "secs": round((last - first) if first is not None else 0.0, 3),
    }
    with open(a.out + ".tmp", "w") as fh:
        json.dump(out, fh)
    os.rename(a.out + ".tmp", a.out)
    return 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("recv")
    r.add_argument("addr")
    r.add_argument("port", type=int)
    r.add_argument("out")
    r.add_argument("--idle", type=float, default=3.0)
    r.add_argument("--timeout", type=float, default=60.0)
    r.add_argument("--ack-every", type=int, default=0)
    s = sub.add_parser("send")
    s.add_argument("addr")
    s.add_argument("port", type=int)
    s.add_argument("--flows", type=int, default=1)
    s.add_argument("--count", type=int, default=1)
    s.add_argument("--sizes", default="512")
    s.add_argument("--pps", type=float, default=0.0)
    s.add_argument("--timeout", type=float, default=60.0)
    s.add_argument("--burst", type=int, default=1)
    s.add_argument("--swap-every", type=int, default=0)
    a = p.parse_args()
    return send(a) if a.cmd == "send" else recv(a)


if __name__ == "__main__":
    sys.exit(main())
