"""The MovieLens download helper against a local HTTP server serving a fixture archive."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
import zipfile

import pytest

from qarm.data.download import download_movielens
from qarm.data.movielens import detect_layout
from qarm.errors import DataError


@pytest.fixture
def mirror(tmp_path, make_csv_layout):
    """A 127.0.0.1 HTTP server whose root holds ml-latest-small.zip (+ .md5, GroupLens style)."""
    src = make_csv_layout("ml-latest-small")
    root = tmp_path / "mirror"
    root.mkdir()
    archive = root / "ml-latest-small.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(src.iterdir()):
            zf.write(f, f"ml-latest-small/{f.name}")
    data = archive.read_bytes()
    (root / "ml-latest-small.zip.md5").write_text(f"MD5 (ml-latest-small.zip) = {hashlib.md5(data).hexdigest()}\n")
    # an archive whose published checksum is wrong, and one that tries to escape its folder
    (root / "ml-1m.zip").write_bytes(data)
    (root / "ml-1m.zip.md5").write_text("0" * 32 + "  ml-1m.zip\n")
    with zipfile.ZipFile(root / "ml-25m.zip", "w") as zf:
        zf.writestr("../evil.txt", "x")
    (root / "ml-25m.zip.md5").write_text(hashlib.md5((root / "ml-25m.zip").read_bytes()).hexdigest())

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hashlib.sha256(data).hexdigest()
    server.shutdown()
    server.server_close()


def test_download_verifies_and_unpacks(mirror, tmp_path):
    url, sha = mirror
    dest = tmp_path / "dest"
    out = download_movielens("ml-latest-small", dest, base_url=url)
    assert out == dest / "ml-latest-small" and (out / "ratings.csv").exists() and (out / "tags.csv").exists()
    assert detect_layout(out) == ("csv", out)
    assert sorted(p.name for p in dest.iterdir()) == ["ml-latest-small"]  # archive and temp folders gone
    # explicit sha256 also works, and an existing copy is reused unless forced
    assert download_movielens("ml-latest-small", dest, base_url=url, checksum=f"sha256:{sha}") == out
    assert download_movielens("ml-latest-small", dest, base_url=url, checksum=f"sha256:{sha}", force=True) == out


def test_checksum_mismatch_leaves_nothing(mirror, tmp_path):
    url, _ = mirror
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match="md5 checksum mismatch"):
        download_movielens("ml-1m", dest, base_url=url)
    with pytest.raises(DataError, match="sha256 checksum mismatch"):
        download_movielens("ml-latest-small", dest, base_url=url, checksum="sha256:" + "ab" * 32)
    assert list(dest.iterdir()) == []


def test_download_errors(mirror, tmp_path):
    url, _ = mirror
    with pytest.raises(DataError, match="unknown MovieLens archive 'ml-5m'"):
        download_movielens("ml-5m", tmp_path)
    with pytest.raises(DataError, match="HTTP 404"):
        download_movielens("ml-20m", tmp_path / "d", base_url=url)
    with pytest.raises(DataError, match="outside the target folder"):
        download_movielens("ml-25m", tmp_path / "d", base_url=url)
    assert not (tmp_path / "evil.txt").exists() and list((tmp_path / "d").iterdir()) == []
    with pytest.raises(DataError, match="expected 'sha256:<hex>'"):
        download_movielens("ml-100k", tmp_path / "d", base_url=url, checksum="crc:12")


def test_cli_download(mirror, tmp_path, capsys):
    from qarm.cli import main as cli_main

    url, _ = mirror
    assert cli_main(["download", "ml-latest-small", "--to", str(tmp_path / "d"), "--url", url]) == 0
    assert (tmp_path / "d" / "ml-latest-small" / "movies.csv").exists()
    assert cli_main(["download", "ml-1m", "--to", str(tmp_path / "d"), "--url", url]) == 2
    assert "checksum mismatch" in capsys.readouterr().err
