"""Images and payloads the security tests share."""

from __future__ import annotations

import base64
import io
import struct
import zlib

from PIL import Image

from tests.api.payloads import webuiapi_txt2img

TINY = webuiapi_txt2img(steps=1, width=64, height=64)


def png_claiming(width: int, height: int) -> str:
    """A valid PNG header declaring width x height with almost no pixel data (a bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    raw = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    return base64.b64encode(raw).decode()


def png_b64(width: int = 64, height: int = 64, color: tuple[int, int, int] = (200, 30, 30)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def assert_a1111_error(response, status: int, *needles: str) -> dict:
    """A 4xx in A1111's error shape whose detail names every needle."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail", "body", "errors"}, body
    for needle in needles:
        assert needle in body["detail"] or needle in body["errors"], (needle, body)
    return body
