"""The limits that protect the reader from decompression bombs and other allocations a file asks for.

A few kilobytes of PNG, JPEG 2000 or DICOM can declare a 60000 x 60000 image;
decoding it would take gigabytes of memory. Every reader checks the declared
dimensions from the header against this limit *before* decoding any pixel.
The file itself, a deflated DICOM data set once inflated, and any element it holds are
bounded by the bytes one such image can take (:func:`max_file_bytes`); a TIFF is refused
after its second page directory, without walking the rest. What remains (the decoders'
own working memory) is bounded per decoder process by :data:`WORKER_MEMORY_BYTES`.
"""

from __future__ import annotations

from pathlib import Path

from fracsight.io.radiograph import UnreadableImage

# 100 megapixels: four times the largest detector in clinical use (43 x 43 cm at 0.1 mm
# is 4300 x 4300 = 18.5 MP), and 400 MB as float32 after decoding.
MAX_PIXELS = 100_000_000
# Bytes per pixel a single radiograph file may hold: an uncompressed image at 32 bits per pixel
# plus a quarter for headers and other data. Larger files are refused before they are read.
FILE_BYTES_PER_PIXEL = 5
# Address space a decoder worker process may add to what it holds at start: a 100-megapixel
# 16-bit DICOM (the largest image the pixel limit lets through) peaks at 1.7 GB resident in its
# worker while it is decoded (measured); anything past this is refused as "needs more memory".
WORKER_MEMORY_BYTES = 3 << 30
# Seconds a decoder worker may spend on one file before it is stopped and the file refused: that
# 100-megapixel DICOM takes 3.3 s, a 3000 x 3000 JPEG 2000 decoded in full 0.4 s (2 shared cores).
DECODE_TIMEOUT_S = 20.0


def max_file_bytes(max_pixels: int = MAX_PIXELS) -> int:
    """The most bytes one radiograph of at most ``max_pixels`` can take in a file or inflated data set.

    It grows with a raised ``max_pixels`` but never falls below the default's: a small pixel
    limit is checked on the header, and DICOM headers alone can take kilobytes.
    """
    return FILE_BYTES_PER_PIXEL * max(max_pixels, MAX_PIXELS)


def check_file_size(path: str | Path, size: int, max_pixels: int = MAX_PIXELS) -> None:
    """Refuse a file too large to hold one radiograph (:func:`max_file_bytes`), before reading it."""
    pixels = max(max_pixels, MAX_PIXELS)
    limit = max_file_bytes(max_pixels)
    if size > limit:
        raise UnreadableImage(
            str(path),
            f"the file is {size:,} bytes, more than one radiograph of at most {pixels:,} pixels can "
            f"take ({FILE_BYTES_PER_PIXEL} bytes per pixel: {limit:,} bytes); refused before reading it",
        )


def check_pixel_count(path: str | Path, rows: int, columns: int, frames: int, max_pixels: int) -> None:
    """Refuse a declared size that is empty or over ``max_pixels``, before decoding."""
    if rows <= 0 or columns <= 0:
        raise UnreadableImage(
            str(path), f"zero-size image ({columns} x {rows} pixels declared in the header)"
        )
    total = rows * columns * max(frames, 1)
    if total > max_pixels:
        frames_text = f" x {frames} frames" if frames > 1 else ""
        raise UnreadableImage(
            str(path),
            f"image too large to decode safely: {columns} x {rows}{frames_text} = {total:,} pixels "
            f"exceeds the limit of {max_pixels:,} (MAX_PIXELS); refused before decoding "
            "(possible decompression bomb)",
        )
