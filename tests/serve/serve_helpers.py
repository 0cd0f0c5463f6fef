"""Helpers of the serving tests: a real server in a subprocess on a free 127.0.0.1 port, redis-server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def item_body(row, item_id: int, media_root: Path) -> dict:
    """An items.parquet row as POST /items content (text fields, media by path under the root)."""
    body = {"item_id": item_id, "title": row.title, "description": row.description, "tags": row.tags,
            "category": row.category, "text": row.text}
    for kind in ("image", "audio"):
        path = getattr(row, kind)
        if isinstance(path, str) and path and getattr(row, f"has_{kind}", True):
            body[f"{kind}_path"] = os.path.relpath(path, media_root)
    return body


class Server:
    """``python -m qarm serve`` in a subprocess; ``url`` once /health answers."""

    def __init__(self, run_dir: Path, log_path: Path, *extra: str, timeout: float = 120.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")
        cmd = [sys.executable, "-m", "qarm", "serve", "--run", str(run_dir), "--host", "127.0.0.1",
               "--port", str(self.port), *extra]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                self._log.close()
                pytest.fail(f"server exited with {self.proc.returncode} before answering:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"server did not answer /health within {timeout}s:\n{self.log_tail()}")
            time.sleep(0.1)
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_bytes()[-n:].decode(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None and self.client.get("/health").status_code == 200

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if hasattr(self, "client"):
            self.client.close()
        self._log.close()


class RedisServer:
    """A real redis-server on 127.0.0.1:``port``, data in ``data_dir`` with an fsync'ed append-only
    file, so ``stop()`` then ``start()`` is an outage and a recovery that keeps what was written."""

    def __init__(self, exe: str, port: int, data_dir: Path) -> None:
        self.exe, self.port, self.data_dir = exe, port, data_dir
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self, timeout: float = 15.0) -> None:
        import redis

        self.proc = subprocess.Popen([self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.data_dir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=self.port)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        self.proc.kill()
                        pytest.fail("redis-server did not start")
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
