"""What the service lets in: request bodies up to a size (``BodyLimit``, refused before they are read), protected
images that are PNGs of the expected side decoded by the rules of faceanonymixer.images (``decode_png``), and a
request rate per API token (``RateLimiter``, a token bucket in process)."""
from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import struct
import threading
import time
import warnings

import numpy as np
from PIL import Image

from ..images import FULL_DECODE_PIXELS, _to_rgb
from .errors import ApiError, invalid, too_large, unsupported

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Chunks a protected image may carry. Compressed metadata (zTXt, iTXt, iCCP) is refused before the decoder sees it:
# the protector writes none, and each costs the decoder up to megabytes of inflating (a metadata bomb).
PNG_CHUNKS = {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"sBIT", b"pHYs", b"bKGD",
              b"tIME", b"tEXt"}


def check_png_chunks(data: bytes, what: str) -> None:
    """Walk the chunk list of a PNG (signature already checked) without inflating anything: every chunk must be
    one of ``PNG_CHUNKS`` and lie inside the data (422 otherwise, naming the chunk)."""
    pos, n = len(PNG_SIGNATURE), len(data)
    while pos + 8 <= n:
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind not in PNG_CHUNKS:
            name = kind.decode("latin-1") if kind.isalpha() else kind.hex()
            raise invalid(f"{what}: PNG chunk '{name}' is not accepted (a protected image holds pixels only, no "
                          "compressed metadata or colour profile); save it without metadata")
        if pos + 12 + length > n:
            raise invalid(f"{what}: the PNG data is damaged or truncated (chunk {kind.decode('latin-1')} runs past "
                          "the end); re-export it")
        pos += 12 + length
        if kind == b"IEND":
            return
    raise invalid(f"{what}: the PNG data is damaged or truncated (no IEND chunk); re-export it")


def decode_b64(s: str, what: str, max_bytes: int) -> bytes:
    """Base64 text of one image -> its bytes; 413 above ``max_bytes`` (checked before decoding), 422 if not base64."""
    if len(s) > (max_bytes + 2) // 3 * 4 + 4:
        raise too_large(f"{what}: {len(s) * 3 // 4} bytes, over the limit of {max_bytes} bytes per image; send the "
                        "protected PNG as written by the protector")
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(f"{what}: not base64 text; send the PNG file's bytes base64-encoded") from None


def decode_png(data: bytes, what: str, side: int, max_bytes: int) -> np.ndarray:
    """A protected image -> ``side x side x 3`` uint8 RGB. Only PNG is opened (415 otherwise); the size is read
    from the header and checked before any pixel is decoded (413 above the images.py decode budget, 422 for
    another side); damaged data is 422."""
    if len(data) > max_bytes:
        raise too_large(f"{what}: {len(data)} bytes, over the limit of {max_bytes} bytes per image")
    if not data.startswith(PNG_SIGNATURE):
        raise unsupported(f"{what}: not a PNG; the service takes only protected images as PNG (the protector's "
                          "output), never originals")
    check_png_chunks(data, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=["PNG"])
    except Image.DecompressionBombError:
        raise too_large(f"{what}: over the decode safety limit (possible decompression bomb)") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise invalid(f"{what}: not a readable PNG ({type(e).__name__}); re-export the protected image") from None
    with im:
        w, h = im.size
        if w * h > FULL_DECODE_PIXELS:
            raise too_large(f"{what}: {w}x{h} px is over the {FULL_DECODE_PIXELS // 1_000_000} Mpx decode limit "
                            "(possible decompression bomb)")
        if (w, h) != (side, side):
            raise invalid(f"{what}: {w}x{h} px, but this service takes protected images of {side}x{side} px (its "
                          "generator's resolution); protect with the same generator as the server")
        try:
            im.load()
            rgb = _to_rgb(im, what)
        except (OSError, ValueError, SyntaxError) as e:
            raise invalid(f"{what}: the PNG data is damaged or truncated ({type(e).__name__}); re-export it") \
                from None
        arr = np.array(rgb, dtype=np.uint8)     # a writable copy (torch.from_numpy wants one)
    if arr.shape != (side, side, 3):
        raise invalid(f"{what}: could not be read as RGB (got {arr.shape})")
    return arr


class RateLimiter:
    """One token bucket per client: ``rate`` requests a second on average, ``burst`` at once."""

    def __init__(self, rate: float, burst: int):  # refill per second, bucket size
        self.rate, self.burst = float(rate), float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}   # client -> (tokens, last time)
        self._lock = threading.Lock()

    def take(self, client: str) -> float:
        """0 when the request may go ahead (one token taken), else the seconds until one is available."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[client] = (tokens - 1.0, now)
                return 0.0
            self._buckets[client] = (tokens, now)
            return (1.0 - tokens) / self.rate


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets 413 before the application sees any of it
    (Content-Length checked first; a chunked body is counted as it arrives and never held beyond the limit); a
    body that has not fully arrived ``timeout_s`` seconds after the request began gets 408 (a client that sends
    a few bytes a minute holds no buffer and no connection for long)."""

    def __init__(self, app, max_bytes: int,   # the ASGI app, the largest body let through
                 timeout_s: float = 60.0):    # seconds the whole body may take to arrive
        self.app, self.max_bytes, self.timeout_s = app, int(max_bytes), float(timeout_s)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return await reply_error(send, invalid("Content-Length is not a number"))
            if n > self.max_bytes:
                return await reply_error(send, self._too_big(n))
        chunks, total = [], 0
        loop = asyncio.get_running_loop()
        end = loop.time() + self.timeout_s
        while True:
            try:
                msg = await asyncio.wait_for(receive(), max(0.0, end - loop.time()))
            except asyncio.TimeoutError:
                return await reply_error(send, ApiError(
                    408, "request_timeout", f"the request body did not arrive within {self.timeout_s:g} s (received "
                    f"{total} bytes); send it at once"))
            if msg["type"] == "http.disconnect":
                return
            body = msg.get("body", b"")
            total += len(body)
            if total > self.max_bytes:
                return await reply_error(send, self._too_big(total, at_least=True))
            chunks.append(body)
            if not msg.get("more_body", False):
                break
        data, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": data, "more_body": False}
        return await self.app(scope, replay, send)

    def _too_big(self, n: int, at_least: bool = False) -> ApiError:
        return too_large(f"request body of {'more than ' if at_least else ''}{n} bytes is over the limit of "
                         f"{self.max_bytes} bytes; send fewer images per request")


async def reply_error(send, e: ApiError):
    """Answer ``e`` as the JSON error body and close the connection (the unread rest of a body is not read)."""
    body = json.dumps({"error": e.error, "detail": e.detail}).encode()
    extra = [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in (e.headers or {}).items()]
    await send({"type": "http.response.start", "status": e.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")] + extra})
    await send({"type": "http.response.body", "body": body})
