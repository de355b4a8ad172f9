"""Echo requests from inside a network namespace, without spawning `ping`.

Benchmarks time "added -> reachable" in milliseconds; starting a ping process
per probe would cost more than what is measured. A raw ICMP socket opened in
the namespace (see calicopy.netns) is reused for every probe.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time

from calicopy.netns import socket_in


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


class Pinger:
    def __init__(self, netns_path: str):
        self.sock = socket_in(netns_path, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        self.ident = os.getpid() & 0xFFFF
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def ping(self, ip: str, timeout: float = 0.05) -> bool:
        """One echo request; True if the reply came within ``timeout``."""
        self.seq = (self.seq + 1) & 0xFFFF
        header = struct.pack("!BBHHH", 8, 0, 0, self.ident, self.seq)
        payload = b"calico-py"
        packet = struct.pack("!BBHHH", 8, 0, _checksum(header + payload), self.ident,
                             self.seq) + payload
        self.sock.sendto(packet, (ip, 0))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([self.sock], [], [], left)[0]:
                return False
            data, (src, _) = self.sock.recvfrom(2048)
            ihl = (data[0] & 0x0F) * 4
            kind, _, _, ident, seq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
            if kind == 0 and src == ip and ident == self.ident and seq == self.seq:
                return True
        return False

    def wait_reachable(self, ip: str, limit: float = 5.0) -> float:
        """Seconds until ``ip`` answers (probing every few ms); raises after ``limit``."""
        start = time.perf_counter()
        while not self.ping(ip, timeout=0.02):
            if time.perf_counter() - start > limit:
                raise TimeoutError(f"{ip} not reachable after {limit}s")
        return time.perf_counter() - start
