#!/usr/bin/env python3
"""Hostile clients for test_server_hostile.sh. Every mode is bounded in time.

  extract <pcap> <client_ip> <out>
      The login frames (VMAC, EXPTTUN, AUTH) a client sent on its first
      ws:// connection in a tcpdump capture, unmasked, one hex line each.
  replay <server_ip> <port> <frames> <seconds>
      Connects again and again for <seconds>, sends those frames unchanged
      and reads how the server ends the connection. Prints a JSON summary.
  flood <server_ip> <port> <password> <vip> <broadcast> <seconds>
      Logs in as a member (it knows the password) and sends FORWARD
      broadcasts and DISCOVERY broadcasts as fast as it can.
  idle <server_ip> <port> <n> <seconds> <src_prefix> <first> <count>
      Holds <n> TCP connections that never send a byte, spread over the
      source addresses <src_prefix>.<first> ... <src_prefix>.<first+count-1>.
"""
import base64
import hashlib
import json
import os
import resource
import select
import socket
import struct
import sys
import time


def pcap_packets(path):
    with open(path, "rb") as f:
        head = f.read(24)
        magic = struct.unpack("<I", head[:4])[0]
        e = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
        link = struct.unpack(e + "I", head[20:24])[0]
        skip = {1: 14, 113: 16}[link]
        while True:
            rec = f.read(16)
            if len(rec) < 16:
                return
            incl = struct.unpack(e + "IIII", rec)[2]
            data = f.read(incl)
            yield data[skip:]


def extract(pcap, client_ip, out):
    want = socket.inet_aton(client_ip)
    segs, port = {}, None
    for ip in pcap_packets(pcap):
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6 or ip[12:16] != want:
            continue
        ihl = (ip[0] & 15) * 4
        tcp = ip[ihl:]
        sport = struct.unpack("!H", tcp[:2])[0]
        seq = struct.unpack("!I", tcp[4:8])[0]
        flags = tcp[13]
        if port is None and flags & 0x02:
            port = sport
            base = seq + 1
        if sport != port or port is None:
            continue
        payload = tcp[(tcp[12] >> 4) * 4 : struct.unpack("!H", ip[2:4])[0] - ihl]
        if payload:
            segs.setdefault((seq - base) & 0xFFFFFFFF, payload)
    stream = b""
    for off in sorted(segs):
        if off == len(stream):
            stream += segs[off]
        elif off < len(stream) < off + len(segs[off]):
            stream += segs[off][len(stream) - off :]
    body = stream[stream.index(b"\r\n\r\n") + 4 :]
    frames = []
    while len(body) >= 2:
        n = body[1] & 127
        i = 2
        if n == 126:
            n, i = struct.unpack("!H", body[2:4])[0], 4
        elif n == 127:
            n, i = struct.unpack("!Q", body[2:10])[0], 10
        mask = body[i : i + 4] if body[1] & 128 else b"\0\0\0\0"
        i += 4 if body[1] & 128 else 0
        if len(body) < i + n:
            break
        data = bytes(b ^ mask[k % 4] for k, b in enumerate(body[i : i + n]))
        body = body[i + n :]
        if data and data[0] in (0, 2, 4):
            frames.append(data)
            if data[0] == 0:
                break
    with open(out, "w") as f:
        for d in frames:
            f.write(d.hex() + "\n")
    print(" ".join({0: "AUTH", 2: "EXPTTUN", 4: "VMAC"}[d[0]] for d in frames))


def ws_connect(host, port, timeout):
    s = socket.create_connection((host, port), timeout=timeout)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            f"GET /hostile HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        buf += chunk
    if b" 101 " not in buf.split(b"\r\n")[0]:
        raise ConnectionError(buf.split(b"\r\n")[0].decode(errors="replace"))
    return s, buf[buf.index(b"\r\n\r\n") + 4 :]


def ws_frame(data, opcode=2):
    mask = os.urandom(4)
    n = len(data)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + mask + bytes(b ^ mask[k % 4] for k, b in enumerate(data))


def frames(buf):
    """Complete WebSocket frames at the front of buf, and what is left."""
    out = []
    while len(buf) >= 2:
        n, i = buf[1] & 127, 2
        if n == 126:
            if len(buf) < 4:
                break
            n, i = struct.unpack("!H", buf[2:4])[0], 4
        elif n == 127:
            if len(buf) < 10:
                break
            n, i = struct.unpack("!Q", buf[2:10])[0], 10
        if len(buf) < i + n:
            break
        out.append((buf[0] & 15, buf[i : i + n]))
        buf = buf[i + n :]
    return out, buf


def read_close(s, rest, deadline):
    """The Close reason the server sends, or None if it keeps the session."""
    buf = rest
    while time.time() < deadline:
        got, buf = frames(buf)
        for op, data in got:
            if op == 8:
                return data[2:].decode(errors="replace")
        r, _, _ = select.select([s], [], [], max(0.0, deadline - time.time()))
        if not r:
            return None
        try:
            chunk = s.recv(65536)
        except OSError:
            return "reset"
        if not chunk:
            return "eof"
        buf += chunk
    return None


def replay(host, port, frames_file, seconds):
    frames = [bytes.fromhex(l.strip()) for l in open(frames_file) if l.strip()]
    end = time.time() + seconds
    summary = {"attempts": 0, "reasons": {}, "admitted": 0}
    while time.time() < end:
        summary["attempts"] += 1
        try:
            s, rest = ws_connect(host, port, 5)
            for f in frames:
                s.sendall(ws_frame(f))
            # A session the server accepted stays open: give it 2 s.
            why = read_close(s, rest, time.time() + 2)
            s.close()
        except OSError as e:
            why = f"error: {e}"
        if why is None:
            summary["admitted"] += 1
            why = "(kept open)"
        key = why.split(":")[0]
        summary["reasons"][key] = summary["reasons"].get(key, 0) + 1
        time.sleep(0.05)
    print(json.dumps(summary))


def flood(host, port, password, vip, bcast, seconds):
    pw = password.encode()
    ts = int(time.time())
    vmac = os.urandom(8).hex().encode()
    vmac_msg = bytes([4]) + vmac + struct.pack("!q", ts)
    vmac_msg += hashlib.sha256(pw + vmac + struct.pack("!q", ts)).digest()
    ip = socket.inet_aton(vip)
    auth = bytes([0]) + ip + struct.pack("!q", ts)
    auth += hashlib.sha256(pw + ip + struct.pack("!q", ts)).digest()
    s, _ = ws_connect(host, port, 5)
    s.sendall(ws_frame(vmac_msg) + ws_frame(auth))
    dst = socket.inet_aton(bcast)
    pkt = bytearray(20 + 8 + 32)
    pkt[0], pkt[8], pkt[9] = 0x45, 64, 17
    pkt[2:4] = struct.pack("!H", len(pkt))
    pkt[12:16], pkt[16:20] = ip, dst
    fwd = ws_frame(bytes([1]) + bytes(pkt))
    disc = ws_frame(bytes([5]) + ip + socket.inet_aton("255.255.255.255"))
    batch = (fwd + disc) * 16
    s.setblocking(False)
    sent, end = 0, time.time() + seconds
    pending = b""
    while time.time() < end:
        if not pending:
            pending = batch
        _, w, _ = select.select([s], [s], [], 0.1)
        if s in w:
            try:
                n = s.send(pending)
                sent += n
                pending = pending[n:]
            except BlockingIOError:
                pass
        try:
            while s.recv(65536):
                pass
        except (BlockingIOError, InterruptedError):
            pass
    print(json.dumps({"frames_sent": sent // (len(fwd) + len(disc)) * 2}))


def idle(host, port, n, seconds, prefix, first, count):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = n + 64
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(need, soft), max(need, hard)))
    end = time.time() + seconds
    socks, failed = [], 0
    for k in range(n):
        if time.time() >= end:
            break
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.bind((f"{prefix}.{first + k % count}", 0))
        try:
            s.connect((host, port))
        except BlockingIOError:
            pass
        except OSError:
            failed += 1
            s.close()
            continue
        socks.append(s)
    opened = time.time()
    print(json.dumps({"opened": len(socks), "failed": failed}), flush=True)
    # Hold them (reading only to notice the server closing them) until the end.
    closed = 0
    live = {s.fileno(): s for s in socks}
    poller = select.poll()
    for fd in live:
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    while time.time() < end and live:
        for fd, _ in poller.poll(200):
            poller.unregister(fd)
            live.pop(fd).close()
            closed += 1
    print(json.dumps({"held_s": round(time.time() - opened, 1), "closed_by_server": closed}))
    for s in live.values():
        s.close()


def main(argv):
    mode = argv[1]
    if mode == "extract":
        extract(argv[2], argv[3], argv[4])
    elif mode == "replay":
        replay(argv[2], int(argv[3]), argv[4], float(argv[5]))
    elif mode == "flood":
        flood(argv[2], int(argv[3]), argv[4], argv[5], argv[6], float(argv[7]))
    elif mode == "idle":
        idle(argv[2], int(argv[3]), int(argv[4]), float(argv[5]), argv[6], int(argv[7]), int(argv[8]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
