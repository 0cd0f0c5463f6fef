"""Bad input against the live server: each case gets its 4xx and a message that says why; never a 5xx,
and the server keeps answering afterwards."""

from __future__ import annotations

import base64
import io
import struct
import wave

import httpx
import pytest
from PIL import Image

from qarm.serve.probe import send_raw_garbage
from qarm.serve.media import BadInput, check_audio, resolve_inside


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _png(size: tuple[int, int], mode: str = "RGB", fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format=fmt)
    return buf.getvalue()


def _wav(frames: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(struct.pack(f"<{frames}h", *([0] * frames)))
    return buf.getvalue()


def _items(**item) -> dict:
    return {"json": {"items": [{"title": "a new film", **item}]}}


JSON = {"content-type": "application/json"}

CASES = [
    # (name, method, path, httpx kwargs, status, words the message must contain)
    ("malformed json", "POST", "/items/codes", {"content": b'{"items": [', "headers": JSON}, 400, "not valid JSON"),
    ("not utf-8", "POST", "/rank", {"content": b"\xff\xfe\x00", "headers": JSON}, 400, "not valid JSON"),
    ("deeply nested json", "POST", "/rank", {"content": b"[" * 100_000 + b"]" * 100_000, "headers": JSON}, 400, ""),
    ("json array body", "POST", "/rank", {"json": [1, 2]}, 422, "dictionary"),
    ("no content type", "POST", "/rank", {"content": b'{"candidates": [1]}'}, 415, "Content-Type: application/json"),
    ("bad base64", "POST", "/items/codes", _items(image_b64="not*base64!"), 400, "items[0].image_b64: not valid base64"),
    ("base64 of text", "POST", "/items/codes", _items(image_b64=_b64(b"hello world, no image")), 400,
     "not a decodable image"),
    ("truncated png", "POST", "/items/codes", _items(image_b64=_b64(_png((64, 64))[:60])), 400, "not a decodable image"),
    ("tiff not accepted", "POST", "/items/codes", _items(image_b64=_b64(_png((8, 8), fmt="TIFF"))), 415, "TIFF"),
    ("decompression bomb", "POST", "/items/codes", _items(image_b64=_b64(_png((5000, 5000), mode="1"))), 413,
     "max_image_pixels"),
    ("bad wav", "POST", "/items/codes", _items(audio_b64=_b64(b"RIFF....WAVEjunk")), 400, "not a readable PCM WAV"),
    ("empty wav", "POST", "/items/codes", _items(audio_b64=_b64(_wav(0))), 400, "no audio frames"),
    ("path outside root", "POST", "/items/codes", _items(image_path="../../../../etc/passwd"), 403,
     "outside the media root"),
    ("absolute path outside root", "POST", "/items/codes", _items(image_path="/etc/hostname"), 403,
     "outside the media root"),
    ("missing file", "POST", "/items/codes", _items(image_path="no/such/poster.png"), 404, "not a file"),
    ("nul in path", "POST", "/items/codes", _items(audio_path="a\x00b.wav"), 400, "NUL"),
    ("both b64 and path", "POST", "/items/codes", _items(image_b64=_b64(b"x"), image_path="x.png"), 422,
     "not both"),
    ("item without content", "POST", "/items/codes", {"json": {"items": [{"item_id": 5}]}}, 422, "no content"),
    ("empty batch", "POST", "/items/codes", {"json": {"items": []}}, 422, "at least 1"),
    ("batch too long", "POST", "/items/codes", {"json": {"items": [{"title": "x"}] * 257}}, 422, "at most 256"),
    ("text too long", "POST", "/items/codes", _items(description="x" * 20_001), 422, "at most 20000"),
    ("misspelt field", "POST", "/items/codes", _items(descripton="typo"), 422, "items.0.descripton: Extra inputs"),
    ("item id as string", "POST", "/items/codes", _items(item_id="12"), 422, "valid integer"),
    ("id not a number", "GET", "/items/abc/codes", {}, 422, "valid integer"),
    ("id beyond int64", "GET", "/items/99999999999999999999/codes", {}, 422, "less than or equal"),
    ("unknown candidates", "POST", "/rank", {"json": {"candidates": [10**15, 10**15 + 1]}}, 404,
     "2 item id(s) neither in this run's catalogue nor ingested"),
    ("unknown history", "POST", "/rank", {"json": {"history": [-7], "candidates": [-7]}}, 404, "catalogue"),
    ("no candidates", "POST", "/rank", {"json": {"candidates": []}}, 422, "at least 1"),
    ("too many candidates", "POST", "/rank", {"json": {"candidates": list(range(1001))}}, 422, "at most 1000"),
    ("bool candidate", "POST", "/rank", {"json": {"candidates": [True]}}, 422, "valid integer"),
    ("nan candidate", "POST", "/rank", {"content": b'{"candidates": [NaN]}', "headers": JSON}, 422, "valid integer"),
    ("unknown variant", "POST", "/rank", {"json": {"candidates": [1], "variant": "nope"}}, 404, "not trained"),
    ("body too large", "POST", "/items/codes", {"content": b" " * 16_000_001, "headers": JSON}, 413,
     "max_body_bytes"),
    ("chunked body too large", "POST", "/items/codes",
     {"content": iter([b" " * 1_000_000] * 17), "headers": JSON}, 413, "max_body_bytes"),
    ("unknown route", "GET", "/nope", {}, 404, "Not Found"),
    ("wrong method", "DELETE", "/items/1/codes", {}, 405, "Method Not Allowed"),
]


@pytest.mark.parametrize("name, method, path, kwargs, status, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_answers_4xx_with_reason(server, served_run, name, method, path, kwargs, status, words):
    if name in ("unknown history", "unknown variant"):  # a real candidate, so only the named part is wrong
        kwargs = {"json": {**kwargs["json"], "candidates": [_first_item(served_run)]}}
    r = server.client.request(method, path, **kwargs)
    assert r.status_code == status, (r.status_code, r.text[:500])
    detail = r.json()["detail"]
    assert isinstance(detail, str) and words in detail, detail
    assert "Traceback" not in r.text


def test_server_survives_garbage_and_keeps_answering(server, served_run):
    # raw junk on the socket, a request cut off mid-body, and a client that vanishes
    assert send_raw_garbage("127.0.0.1", server.port) == 3
    assert server.alive()
    assert server.client.get(f"/items/{_first_item(served_run)}/codes").status_code == 200
    assert "Traceback" not in server.log_tail(100_000)


def test_media_path_checks_follow_symlinks(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.png").write_bytes(_png((4, 4)))
    (root / "ok.png").write_bytes(_png((4, 4)))
    (root / "link.png").symlink_to(outside / "secret.png")
    (root / "dirlink").symlink_to(outside)
    assert resolve_inside("ok.png", str(root), "f", 10_000) == (root / "ok.png").resolve()
    assert resolve_inside(str(root / "ok.png"), str(root), "f", 10_000) == (root / "ok.png").resolve()
    for bad in ("link.png", "dirlink/secret.png", "../outside/secret.png", str(outside / "secret.png")):
        with pytest.raises(BadInput, match="outside the media root") as err:
            resolve_inside(bad, str(root), "items[0].image_path", 10_000)
        assert err.value.status == 403
    with pytest.raises(BadInput, match=r"more than 10 \(limit max_media_bytes\)"):
        resolve_inside("ok.png", str(root), "f", 10)
    with pytest.raises(BadInput, match="file paths are disabled"):
        resolve_inside("ok.png", "", "f", 10_000)


def _first_item(run) -> int:
    from qarm.io import read_parquet

    return int(read_parquet(run / "items.parquet", columns=["item_id"])["item_id"].iloc[0])


def test_client_timeouts_do_not_wedge_the_server(server):
    # a client abandons an encode request mid-flight; the server finishes it and answers the next one
    body = {"items": [{"title": f"film {i}", "description": "a story " * 50} for i in range(8)]}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{server.url}/items/codes", json=body, timeout=0.01)
    assert server.client.post("/items/codes", json={"items": [{"title": "after"}]}).status_code == 200


def test_long_audio_is_cut_to_what_the_tower_reads():
    long = _wav(8000 * 10)
    cut = check_audio(long, "f", keep_seconds=1.0)
    with wave.open(io.BytesIO(cut)) as w:
        assert w.getnframes() == 8000 * 2 and w.getframerate() == 8000 and w.getsampwidth() == 2
    assert check_audio(long, "f", keep_seconds=None) is long
    short = _wav(4000)
    assert check_audio(short, "f", keep_seconds=1.0) is short
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(3)
        w.setframerate(8000)
        w.writeframes(b"\0" * 300)
    with pytest.raises(BadInput, match="3-byte samples") as err:
        check_audio(buf.getvalue(), "f")
    assert err.value.status == 415
