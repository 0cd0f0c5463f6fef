"""Request media: base64 decoding, path-inside-root checks, image/audio decode checks.

Every check raises :class:`BadInput` (an HTTP status plus a message naming the field, e.g.
``items[3].image_b64``), so hostile or broken media is answered with a 4xx before the encoder
ever sees it. Accepted media is written to a per-request temp folder, because the encoder reads
items in the items schema, whose ``image``/``audio`` columns are file paths.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import wave
from pathlib import Path

from qarm.errors import QarmError

_DATA_URL = re.compile(r"^data:[\w/+.-]+;base64,")
_IMAGE_SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif"}


class BadInput(QarmError):
    """The request is well-formed JSON but its content cannot be used; ``status`` is the HTTP code."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def decode_b64(text: str, field: str, max_bytes: int) -> bytes:
    """Standard base64 (an optional ``data:...;base64,`` prefix is allowed) -> bytes, at most ``max_bytes``."""
    text = _DATA_URL.sub("", text, count=1)
    if (len(text) // 4) * 3 > max_bytes + 3:  # refuse before decoding: the size is known from the length
        raise BadInput(f"{field}: decodes to more than {max_bytes} bytes (limit max_media_bytes)", 413)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadInput(f"{field}: not valid base64 ({exc})") from None
    if not data:
        raise BadInput(f"{field}: empty after base64 decoding")
    if len(data) > max_bytes:
        raise BadInput(f"{field}: {len(data)} bytes, more than {max_bytes} (limit max_media_bytes)", 413)
    return data


def check_image(data: bytes, field: str, max_pixels: int) -> str:
    """Decode the image fully; returns the file suffix of its format (``.jpg``, ``.png``, ...).

    The pixel count is checked from the header, before the pixels are decoded (decompression bombs).
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format or ""
            if fmt not in _IMAGE_SUFFIX:
                raise BadInput(f"{field}: image format {fmt or 'unknown'} not accepted; "
                               f"use one of {', '.join(sorted(_IMAGE_SUFFIX))}", 415)
            if im.width * im.height > max_pixels:
                raise BadInput(f"{field}: {im.width}x{im.height} image has more than {max_pixels} pixels "
                               f"(limit max_image_pixels)", 413)
            im.load()
    except BadInput:
        raise
    except Exception as exc:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError, ...)
        raise BadInput(f"{field}: not a decodable image ({type(exc).__name__}: {exc})") from None
    return _IMAGE_SUFFIX[fmt]


def check_audio(data: bytes, field: str, keep_seconds: float | None = None) -> bytes:
    """A non-empty PCM WAV (8/16/32-bit, what the audio tower reads) -> WAV bytes to hand the encoder.

    With ``keep_seconds``, the clip is cut to that many seconds plus one of margin: the audio tower
    reads only its first seconds, and resampling a long clip in full would cost seconds of CPU.
    """
    try:
        with wave.open(io.BytesIO(data), "rb") as w:
            n, rate, width, channels = w.getnframes(), w.getframerate(), w.getsampwidth(), w.getnchannels()
            if n <= 0:
                raise BadInput(f"{field}: WAV has no audio frames")
            if width not in (1, 2, 4) or not 1_000 <= rate <= 384_000 or not 1 <= channels <= 8:
                raise BadInput(f"{field}: WAV with {width}-byte samples at {rate} Hz, {channels} channels not "
                               f"accepted; use 8/16/32-bit PCM, 1-8 channels, 1 kHz-384 kHz", 415)
            keep = n if keep_seconds is None else min(n, int((keep_seconds + 1.0) * rate))
            frames = w.readframes(keep)
            if len(frames) < width * channels:
                raise BadInput(f"{field}: WAV header promises {n} frames but holds none")
    except BadInput:
        raise
    except Exception as exc:  # wave.Error, EOFError, struct.error: all mean "not a usable WAV"
        raise BadInput(f"{field}: not a readable PCM WAV ({type(exc).__name__}: {exc})") from None
    if keep == n:
        return data
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(frames)
    return out.getvalue()


def resolve_inside(path_text: str, root: str, field: str, max_bytes: int) -> Path:
    """The real path of ``path_text`` (relative paths are taken under ``root``); it must lie inside ``root``.

    Symlinks are resolved before the check, so a link inside the root that points outside is refused.
    """
    if not root:
        raise BadInput(f"{field}: file paths are disabled; start the server with --media-root DIR "
                       f"or send the media as base64", 403)
    if "\x00" in path_text:
        raise BadInput(f"{field}: path contains a NUL byte")
    root_real = Path(root).resolve()
    real = (root_real / path_text).resolve()  # an absolute path_text replaces root_real here
    if not real.is_relative_to(root_real):
        raise BadInput(f"{field}: {path_text!r} lies outside the media root", 403)
    if not real.is_file():
        raise BadInput(f"{field}: {path_text!r} is not a file under the media root", 404)
    size = os.path.getsize(real)
    if size > max_bytes:
        raise BadInput(f"{field}: file has {size} bytes, more than {max_bytes} (limit max_media_bytes)", 413)
    return real
