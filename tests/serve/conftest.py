"""Serving fixtures: a real server in a subprocess on a free 127.0.0.1 port, a real redis-server.

``served_run`` is the demo-fast world run through every stage the server reads (prepare to train);
``lookup_run`` is a run folder holding only its code table and catalogue, so a server over it starts
without loading any model (the code-store tests need nothing else).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from qarm.io import read_parquet
from serve_helpers import RedisServer, Server, free_port

SERVE_STAGES = ["prepare", "pairs", "align", "quantize", "train"]


@pytest.fixture(scope="session")
def served_run(pipeline_run) -> Path:
    """demo-fast through train; ``QARM_SERVE_RUN=DIR`` serves an existing finished run instead."""
    if os.environ.get("QARM_SERVE_RUN"):
        return Path(os.environ["QARM_SERVE_RUN"])
    return pipeline_run("demo-fast", SERVE_STAGES)


@pytest.fixture(scope="session")
def lookup_run(served_run, tmp_path_factory) -> Path:
    """A run folder with only codes.parquet, items.parquet and config.json of ``served_run``."""
    out = tmp_path_factory.mktemp("lookup-run")
    for name in ("codes.parquet", "items.parquet", "config.json"):
        shutil.copy(served_run / name, out / name)
    return out


@pytest.fixture(scope="session")
def media_root(served_run) -> Path:
    """The folder holding the run's media files (image_path/audio_path must lie inside it)."""
    items = read_parquet(served_run / "items.parquet", columns=["image", "audio"])
    return Path(os.path.commonpath([p for col in ("image", "audio") for p in items[col].dropna()]))


@pytest.fixture(scope="session")
def server(served_run, media_root, tmp_path_factory):
    """The full server (encoder, codebooks, ranker) over ``served_run``, codes from codes.parquet."""
    srv = Server(served_run, tmp_path_factory.mktemp("server") / "server.log", "--media-root", str(media_root))
    yield srv
    srv.stop()


@pytest.fixture
def redis_server(tmp_path):
    """A real redis-server on 127.0.0.1 (DB 0 at ``.url``), its data in tmp_path; shut down after."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server not found: apt-get install -y redis-server")
    srv = RedisServer(exe, free_port(), tmp_path)
    yield srv
    srv.stop()
