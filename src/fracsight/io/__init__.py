"""Reading radiographs: PNG, JPEG, TIFF and DICOM into one :class:`Radiograph`.

``read_radiograph(path, max_pixels=None)`` is the one entry point: it recognises
the format from the file's bytes and returns float32 gray pixels in [0, 1]
(bone bright), or raises ``UnreadableImage`` (``TruncatedImage`` when the data
ends early) or ``NotARadiograph`` with a reason that names the file.
``read_radiograph_bytes(data, name)`` reads a file received in memory (upload, network).
``DecoderPool`` runs the same readers in worker processes, so that a file that crashes or
hangs a native decoder costs only itself (``DecoderFailed``): every reader of untrusted
files (``predict``, services) goes through it.
``is_truncated(path)`` tells the audit which files were cut short.
``reduced``: an image reduced in the decoder process to what ``predict`` needs of it (the
model's input and the overlay's size), the same answers and pictures as from the full image.
Conventions and policies live with their code: ``intensity`` (PNG/JPEG/TIFF
scaling, colour), ``dicom_policy`` (accepted modalities), ``dicom_display``
(LUTs, windows, MONOCHROME1), ``truncation`` (truncated JPEGs), ``limits``.
Writing: ``durable`` (files that survive a crash), ``png_encode`` (overlay PNGs, fast).
"""

from fracsight.io.formats import ImageFormat
from fracsight.io.limits import MAX_PIXELS
from fracsight.io.pool import DecoderFailed, DecoderPool
from fracsight.io.radiograph import NotARadiograph, Radiograph, RefusedInput, UnreadableImage
from fracsight.io.read import is_truncated, read_radiograph, read_radiograph_bytes
from fracsight.io.size import image_size as image_size  # re-exported: header-only size
from fracsight.io.truncation import MIN_DECODED_FRACTION, TruncatedImage

__all__ = [
    "Radiograph",
    "RefusedInput",
    "UnreadableImage",
    "NotARadiograph",
    "TruncatedImage",
    "DecoderFailed",
    "DecoderPool",
    "ImageFormat",
    "MAX_PIXELS",
    "MIN_DECODED_FRACTION",
    "read_radiograph",
    "read_radiograph_bytes",
    "is_truncated",
]
