"""A PNG encoder for fracsight's overlays: half of Pillow's time for the same file size.

Pillow chooses a filter for every row by trying all five (what libpng does), which costs
about as much as the compression itself at zlib level 1. On a radiograph overlay, smooth
from one row to the next, the "up" filter alone compresses as well (within a few per cent),
and numpy computes it for the whole image in one subtraction. zlib releases the GIL while it
compresses, so overlays written from a thread pool overlap with the model.

Only what the overlays need: 8-bit gray, RGB and RGBA, text chunks; other modes go to Pillow.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
from PIL import Image

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOUR_TYPES = {"L": 0, "RGB": 2, "RGBA": 6}  # PNG colour type of each Pillow mode we write
_FILTER_UP = 2


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def text_chunk(key: str, value: str) -> bytes:
    """A tEXt chunk, or an uncompressed iTXt chunk (UTF-8) for text Latin-1 cannot hold, as
    Pillow's ``PngInfo.add_text`` writes them."""
    keyword = key.encode("latin-1")
    if not 1 <= len(keyword) <= 79:
        raise ValueError(f"PNG text keyword {key!r} must be 1 to 79 characters")
    try:
        return _chunk(b"tEXt", keyword + b"\0" + value.encode("latin-1"))
    except UnicodeEncodeError:
        return _chunk(b"iTXt", keyword + b"\0\0\0\0\0" + value.encode("utf-8"))


def encode_png(image: Image.Image, text: dict[str, str] | None = None, level: int = 1) -> bytes:
    """``image`` as PNG file bytes, every row "up"-filtered, zlib ``level``, ``text`` as text chunks."""
    colour = _COLOUR_TYPES.get(image.mode)
    if colour is None:  # not an overlay's mode: Pillow knows them all
        import io

        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        for key, value in (text or {}).items():
            info.add_text(key, value)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=level, pnginfo=info)
        return buffer.getvalue()
    pixels = np.asarray(image)
    height, width = pixels.shape[:2]
    flat = pixels.reshape(height, -1)
    rows = np.empty((height, flat.shape[1] + 1), dtype=np.uint8)
    rows[:, 0] = _FILTER_UP
    rows[:1, 1:] = flat[:1]  # the first row's prior row is zeros: "up" leaves it as it is
    np.subtract(flat[1:], flat[:-1], out=rows[1:, 1:])  # modulo 256, as PNG defines it
    compressor = zlib.compressobj(level)
    data = compressor.compress(rows) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    parts = [_SIGNATURE, _chunk(b"IHDR", header)]
    parts += [text_chunk(key, value) for key, value in (text or {}).items()]
    parts += [_chunk(b"IDAT", data), _chunk(b"IEND", b"")]
    return b"".join(parts)
