#!/usr/bin/env python3
"""Replays the UDP payloads of a pcap file from this host's own address.

usage: replay_pcap.py <pcap> <dst_ip> <dst_port> <seconds> <pps>

The capture comes from tcpdump -w on an Ethernet interface (link type 1)
or a Linux cooked capture (113). Each captured UDP payload is sent again,
unchanged, to dst_ip:dst_port, cycling through the capture at <pps>
datagrams per second for <seconds>. Prints how many were sent.
"""
import socket
import struct
import sys
import time


def payloads(path):
    with open(path, "rb") as f:
        head = f.read(24)
        if len(head) < 24:
            return []
        magic = struct.unpack("<I", head[:4])[0]
        endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
        linktype = struct.unpack(endian + "I", head[20:24])[0]
        link_len = {1: 14, 113: 16}.get(linktype)
        if link_len is None:
            sys.exit(f"replay_pcap: link type {linktype} not handled")
        out = []
        while True:
            rec = f.read(16)
            if len(rec) < 16:
                break
            incl = struct.unpack(endian + "I", rec[8:12])[0]
            frame = f.read(incl)
            ip = frame[link_len:]
            if len(ip) < 28 or ip[0] >> 4 != 4 or ip[9] != 17:
                continue
            ihl = (ip[0] & 15) * 4
            udp = ip[ihl:]
            length = struct.unpack("!H", udp[4:6])[0]
            out.append(bytes(udp[8:length]))
        return out


def main():
    path, dst_ip, dst_port, seconds, pps = sys.argv[1:6]
    data = payloads(path)
    if not data:
        sys.exit("replay_pcap: no UDP payloads in the capture")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dst = (dst_ip, int(dst_port))
    gap = 1.0 / float(pps)
    end = time.monotonic() + float(seconds)
    sent = 0
    while time.monotonic() < end:
        s.sendto(data[sent % len(data)], dst)
        sent += 1
        time.sleep(gap)
    print(f"{sent} {len(data)}")


main()
