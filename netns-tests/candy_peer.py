#!/usr/bin/env python3
"""A stock Candy client as far as the relay goes, for the compatibility
test: it logs in the way Candy does (VMAC, then AUTH for a static address,
both hashed with the password), sends ICMP echo requests to a ringlink
node through the relay in clear (FORWARD frames), answers the node's echo
requests the same way, and reports what came back. It also records every
frame that a stock client would misread: a sealed ringlink packet (IPv4
protocol 253), and a unicast GENERAL of 18 bytes or more, which Candy v6
takes for a LAN candidate.

Usage: candy_peer.py HOST PORT PASSWORD OWN_VIP PEER_VIP COUNT
Prints one JSON line: {"sent", "replies", "answered", "sealed", "generals_unicast", ...}
"""

import hashlib
import json
import os
import select
import socket
import struct
import sys
import time

from server_hostile import frames, ws_connect, ws_frame


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4(src, dst, proto, payload):
    h = bytearray(20)
    h[0], h[8], h[9] = 0x45, 64, proto
    h[2:4] = struct.pack("!H", 20 + len(payload))
    h[12:16], h[16:20] = src, dst
    h[10:12] = struct.pack("!H", checksum(bytes(h)))
    return bytes(h) + payload


def icmp(kind, ident, seq, data):
    m = bytearray(struct.pack("!BBHHH", kind, 0, 0, ident, seq) + data)
    m[2:4] = struct.pack("!H", checksum(bytes(m)))
    return bytes(m)


def main(argv):
    host, port, password, own, peer, count = argv[1], int(argv[2]), argv[3], argv[4], argv[5], int(argv[6])
    pw = password.encode()
    ts = int(time.time())
    vmac = os.urandom(8).hex().encode()
    vmac_msg = bytes([4]) + vmac + struct.pack("!q", ts)
    vmac_msg += hashlib.sha256(pw + vmac + struct.pack("!q", ts)).digest()
    me, them = socket.inet_aton(own), socket.inet_aton(peer)
    auth = bytes([0]) + me + struct.pack("!q", ts)
    auth += hashlib.sha256(pw + me + struct.pack("!q", ts)).digest()
    s, rest = ws_connect(host, port, 5)
    s.sendall(ws_frame(vmac_msg) + ws_frame(auth))
    ident = os.getpid() & 0xFFFF
    stats = {"sent": 0, "replies": 0, "answered": 0, "sealed": 0, "generals_unicast": 0, "closed": None}
    buf = rest
    next_send, seq = time.time() + 1.0, 0
    end = time.time() + 1.0 + count * 0.2 + 3.0
    while time.time() < end:
        if seq < count and time.time() >= next_send:
            pkt = ipv4(me, them, 1, icmp(8, ident, seq, b"candy-compat" * 4))
            s.sendall(ws_frame(bytes([1]) + pkt))
            stats["sent"] += 1
            seq += 1
            next_send = time.time() + 0.2
        r, _, _ = select.select([s], [], [], 0.05)
        if not r:
            continue
        chunk = s.recv(65536)
        if not chunk:
            stats["closed"] = "eof"
            break
        got, buf = frames(buf + chunk)
        for op, data in got:
            if op == 8:
                stats["closed"] = data[2:].decode(errors="replace")
                end = 0
                break
            if op != 2 or not data:
                continue
            if data[0] == 0xFF and len(data) >= 18 and data[8:12] != b"\xff\xff\xff\xff":
                stats["generals_unicast"] += 1
            if data[0] != 1 or len(data) < 21:
                continue
            p = data[1:]
            if p[9] == 253:
                stats["sealed"] += 1
                continue
            if p[9] != 1 or p[12:16] != them:
                continue
            ihl = (p[0] & 15) * 4
            kind, _, _, pid, pseq = struct.unpack("!BBHHH", p[ihl : ihl + 8])
            if kind == 0 and pid == ident:
                stats["replies"] += 1
            elif kind == 8:
                # The node pings us: answer as a host behind Candy would.
                reply = ipv4(me, them, 1, icmp(0, pid, pseq, p[ihl + 8 :]))
                s.sendall(ws_frame(bytes([1]) + reply))
                stats["answered"] += 1
    s.close()
    print(json.dumps(stats))


if __name__ == "__main__":
    main(sys.argv)
