#!/usr/bin/env python3
"""NAT lab probe (netns-tests/nat_lab.sh).

server: binds every given ip:port and answers each JSON request
        {"id": n, "reply_from": "ip:port"} from the named socket with
        {"id": n, "seen": "ip:port"} (the request's source as seen here),
        like an RFC 5780 STUN server's CHANGE-REQUEST.
client: from behind a NAT, measures mapping, filtering and successive
        mappings against such a server; prints one JSON object.
inbound: sends one datagram to ip:port from a connected socket and prints
        "refused" (ICMP port unreachable came back) or "silent".
"""
import json
import socket
import sys
import select

TIMEOUT = 1.0
TRIES = 2


def ep(s):
    ip, port = s.rsplit(":", 1)
    return ip, int(port)


def server(endpoints, seconds):
    socks = {}
    for e in endpoints:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(ep(e))
        socks[ep(e)] = s
    for _ in range(100000):
        ready, _, _ = select.select(list(socks.values()), [], [], seconds)
        if not ready:
            return  # idle for the whole period: the test is over
        for s in ready:
            data, src = s.recvfrom(2048)
            try:
                req = json.loads(data)
                out = socks[ep(req["reply_from"])]
            except (ValueError, KeyError, TypeError):
                continue  # not ours: ignore, keep serving
            reply = {"id": req["id"], "seen": "%s:%d" % src}
            out.sendto(json.dumps(reply).encode(), src)


class Asker:
    def __init__(self):
        self.next_id = 0

    def ask(self, sock, to, reply_from):
        """The mapped address the server saw, or None if no answer came."""
        self.next_id += 1
        req = json.dumps({"id": self.next_id, "reply_from": reply_from}).encode()
        for _ in range(TRIES):
            sock.sendto(req, ep(to))
            sock.settimeout(TIMEOUT)
            try:
                for _ in range(10):
                    data, _ = sock.recvfrom(2048)
                    rep = json.loads(data)
                    if rep.get("id") == self.next_id:
                        return rep["seen"]
            except socket.timeout:
                continue
        return None


def client(primary, alt_port, other, fresh, local_port, extra):
    """primary = ip1:p1, alt_port = ip1:p2, other = ip2:p2, fresh = ip2:p1.

    m2 is the mapping towards an endpoint that never sent to us; m3 the one
    towards `other`, whose answer to the filtering test came in first (on a
    router without an input firewall that leaves a conntrack entry which
    makes masquerade pick another port: issue 13's bare-masquerade case).
    """
    a = Asker()
    main = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    main.bind(("0.0.0.0", local_port))
    m1 = a.ask(main, primary, primary)
    # Filtering first: the mapping test below sends to `other` and would
    # open the filter these probe.
    eif = a.ask(main, primary, other) is not None
    port_changed = a.ask(main, primary, alt_port) is not None
    m2 = a.ask(main, fresh, fresh)
    m3 = a.ask(main, other, other)
    sessions = [[local_port, m1], [local_port, m2], [local_port, m3]]
    for _ in range(extra):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", 0))
        sessions.append([s.getsockname()[1], a.ask(s, primary, primary)])
    print(json.dumps({"m1": m1, "m2": m2, "m3": m3, "eif": eif, "port_changed": port_changed,
                      "sessions": sessions}))


def inbound(target):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(ep(target))
    s.settimeout(TIMEOUT)
    try:
        s.send(b"unsolicited")
        s.recv(2048)
        print("answered")
    except ConnectionRefusedError:
        print("refused")
    except socket.timeout:
        print("silent")


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "server":
        server(sys.argv[3:], float(sys.argv[2]))
    elif mode == "client":
        client(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6]), int(sys.argv[7]))
    elif mode == "inbound":
        inbound(sys.argv[2])
    else:
        sys.exit("usage: nat_probe.py server|client|inbound ...")
