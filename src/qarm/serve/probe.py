"""Raw-socket bad input for a running server: what the load test and the tests both send.

Each payload goes on its own connection: bytes that are not HTTP at all, a request whose body is
cut short, and a negative Content-Length. A healthy server drops them and keeps answering.
"""

from __future__ import annotations

import socket

GARBAGE_PAYLOADS: tuple[bytes, ...] = (
    b"\x16\x03\x01\x02\x00garbage-not-http\r\n\r\n",
    b"POST /rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    b"GET /items/1/codes HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
)


def send_raw_garbage(host: str, port: int, payloads: tuple[bytes, ...] = GARBAGE_PAYLOADS) -> int:
    """Send each payload on a fresh socket, half-close, read whatever comes back; returns the count."""
    for payload in payloads:
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            try:
                s.recv(4096)
            except OSError:  # the server may reset the connection: that is an acceptable answer
                pass
    return len(payloads)
