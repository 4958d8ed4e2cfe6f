"""Exact and near-duplicate images: the only guard against leakage when there are no patient ids.

Two images are *exact* duplicates when their decoded pixels are identical, and *near*
duplicates when they are the same radiograph stored differently: re-exported at another size
or JPEG quality, re-windowed (brightness, contrast, gamma), or truncated. Duplicates must share
a split and should share a label.

Two signals decide, because on radiographs each fails where the other holds (measured on
FracAtlas, see ``DEFAULT_MAX_DISTANCE``):

* a 256-bit difference hash (dHash: 16 rows x 17 columns of area averages, each cell compared
  with its right-hand neighbour). Blind to any increasing change of intensities, but the
  dark, nearly flat background of radiographs makes many of its bits flip on re-encoding.
* the Pearson correlation of 32 x 32 area-averaged thumbnails. Survives resizing and
  re-encoding (>= 0.997) and brightness/contrast changes, less so gamma changes.

A pair is a near duplicate when the dHash distance is <= ``max_distance`` or the thumbnail
correlation is >= ``min_correlation``. Pixels a truncated JPEG never decoded (8 x 8 blocks of
the uniform grey 128 that the decoder fills in) are masked out of both comparisons, so a
truncated copy still matches its complete original.

Images are read by :func:`fracsight.io.read_radiograph`, as every command reads them: DICOM
included, truncation detected there, and a JPEG with under 90% of its rows refused (such a file
is flagged as truncated but not fingerprinted: no fracsight command trains or evaluates on it).

A 64-bit DCT pHash was tried and dropped: on FracAtlas it put 596 pairs of *different*
radiographs within 6 bits (similar limb silhouettes on black), while true copies with a
truncated tail sat up to 14 bits apart.

Measured on 100 FracAtlas images altered here: resizing (x0.5 and x1.5), JPEG quality 40-92,
brightness +20, contrast x0.8 and gamma 0.7 are recognised in 99-100 % of cases. Crops are the
weak spot (no alignment search is done): 98 % of 0.5 %-per-side crops, 84 % of 1 % and 38 % of
2 % are recognised.
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fracsight.data.image_hashes import pixel_sha256

log = logging.getLogger(__name__)

# Tuned on FracAtlas (3,229 radiographs; borderline pairs checked by eye side by side): copies of
# one radiograph (re-exports, re-windowing, truncated copies) are at most 7 of 256 dHash bits apart
# once undecoded pixels are masked, or correlate at >= 0.99. The closest pairs of *different*
# radiographs are 9-13 bits apart (often the same patient's next exposure) and correlate at
# <= 0.982, so neither rule links them. Such same-patient pairs are not grouped: no image rule can
# tell them from look-alike patients, only patient ids can.
DEFAULT_MAX_DISTANCE = 8
DEFAULT_MIN_CORRELATION = 0.99

_DHASH_ROWS = 16
_DHASH_BITS = _DHASH_ROWS * _DHASH_ROWS
_THUMB = 32
_MIN_COMMON_FRACTION = 0.5  # compare masked images only when half the bits/pixels are valid in both
_TRUNCATION_FILL = 128  # what libjpeg decodes missing MCUs to (DC 0 after level shift)


class DuplicateKind(str, enum.Enum):
    EXACT = "exact"  # identical decoded pixels
    NEAR = "near"  # same radiograph, stored differently


@dataclass(frozen=True)
class Fingerprint:
    """What is needed to recognise one image again.

    ``thumb`` is the 32 x 32 area-averaged image, min-max scaled to uint8 (1 KiB);
    ``dhash_valid`` / ``thumb_valid`` mark bits / thumbnail pixels computed only from decoded
    pixels (all set unless the image was truncated).
    """

    sha256: str  # digest of shape, dtype and decoded pixel bytes: equal means identical pixels
    dhash: int  # 256 bits
    dhash_valid: int  # 256 bits
    thumb: bytes
    thumb_valid: bytes  # 1024 bytes of 0/1
    height: int
    width: int

    @property
    def complete(self) -> bool:
        return self.dhash_valid == (1 << _DHASH_BITS) - 1

    def dhash_distance(self, other: Fingerprint) -> float:
        """Differing dHash bits, scaled to 256 over the bits valid in both; inf if too few are."""
        common = self.dhash_valid & other.dhash_valid
        n = common.bit_count()
        if n < _MIN_COMMON_FRACTION * _DHASH_BITS:
            return float("inf")
        return ((self.dhash ^ other.dhash) & common).bit_count() * _DHASH_BITS / n

    def correlation(self, other: Fingerprint) -> float:
        """Pearson correlation of the thumbnails over pixels valid in both (nan if too few or flat)."""
        a, b = _thumb_array(self), _thumb_array(other)
        mask = _valid_array(self) & _valid_array(other)
        return _masked_correlation(a, b, mask)


class FingerprintError(ValueError):
    """The array cannot be fingerprinted (wrong shape, empty, not finite)."""


def _thumb_array(fp: Fingerprint) -> np.ndarray:
    return np.frombuffer(fp.thumb, dtype=np.uint8).astype(np.float64)


def _valid_array(fp: Fingerprint) -> np.ndarray:
    return np.frombuffer(fp.thumb_valid, dtype=np.uint8).astype(bool)


def _masked_correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    if mask.sum() < _MIN_COMMON_FRACTION * mask.size:
        return float("nan")
    a = a[mask] - a[mask].mean()
    b = b[mask] - b[mask].mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def _area_resize(gray: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Average ``gray`` down to rows x cols with Pillow's box filter (area averaging, no aliasing)."""
    img = Image.fromarray(np.ascontiguousarray(gray, dtype=np.float32), mode="F")
    return np.asarray(img.resize((cols, rows), Image.Resampling.BOX), dtype=np.float64)


def _bits_to_int(bits: np.ndarray) -> int:
    return int.from_bytes(np.packbits(bits.astype(np.uint8).ravel()).tobytes(), "big")


def _as_gray(pixels: np.ndarray) -> np.ndarray:
    arr = np.asarray(pixels)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        arr = arr[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    if arr.ndim != 2:
        raise FingerprintError(f"pixels must be a 2-D grayscale or H x W x 3/4 array, got shape {arr.shape}")
    if arr.size == 0:
        raise FingerprintError(f"pixels array is empty (shape {arr.shape})")
    gray = arr.astype(np.float64)
    if not np.isfinite(gray).all():
        raise FingerprintError(f"pixels contain {int((~np.isfinite(gray)).sum())} NaN or infinite values")
    return gray


def image_fingerprint(pixels: np.ndarray, valid: np.ndarray | None = None) -> Fingerprint:
    """Fingerprint one decoded image (2-D grayscale, or RGB which is converted to luma).

    ``valid`` (same H x W, bool) marks pixels that were really decoded; None means all were.
    """
    raw = np.ascontiguousarray(pixels)
    gray = _as_gray(raw)
    if valid is None:
        valid_f = np.ones(gray.shape)
    else:
        if valid.shape != gray.shape:
            raise FingerprintError(f"valid mask shape {valid.shape} differs from pixels shape {gray.shape}")
        valid_f = valid.astype(np.float64)
        gray = np.where(valid, gray, 0.0)

    def masked_average(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
        weight = _area_resize(valid_f, rows, cols)
        mean = _area_resize(gray, rows, cols) / np.maximum(weight, 1e-12)
        return mean, weight > 0.999

    grid, grid_ok = masked_average(_DHASH_ROWS, _DHASH_ROWS + 1)
    dhash_bits = grid[:, 1:] > grid[:, :-1]
    dhash_ok = grid_ok[:, 1:] & grid_ok[:, :-1]

    thumb, thumb_ok = masked_average(_THUMB, _THUMB)
    lo, hi = (thumb[thumb_ok].min(), thumb[thumb_ok].max()) if thumb_ok.any() else (0.0, 0.0)
    scaled = np.clip((thumb - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0) * 255.0
    scaled[~thumb_ok] = 0.0
    return Fingerprint(
        sha256=pixel_sha256(raw),
        dhash=_bits_to_int(dhash_bits & dhash_ok),
        dhash_valid=_bits_to_int(dhash_ok),
        thumb=np.round(scaled).astype(np.uint8).tobytes(),
        thumb_valid=thumb_ok.astype(np.uint8).tobytes(),
        height=int(gray.shape[0]),
        width=int(gray.shape[1]),
    )


@dataclass(frozen=True)
class DuplicatePair:
    """Two items (indices into the fingerprint list, i < j) recognised as the same image."""

    i: int
    j: int
    kind: DuplicateKind
    dhash_distance: float  # of 256, over bits valid in both
    correlation: float  # thumbnail Pearson correlation, over pixels valid in both


def _popcount(words: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(words)
    as_bytes = words[..., None].view(np.uint8)
    return np.unpackbits(as_bytes, axis=-1).sum(axis=-1)


def _words(value: int) -> list[int]:
    return [(value >> (64 * k)) & 0xFFFFFFFFFFFFFFFF for k in range(_DHASH_BITS // 64)]


def _masked_correlations(thumbs: np.ndarray, thumb_ok: np.ndarray, r: int) -> np.ndarray:
    """Correlation of item r's thumbnail with every item's, each over the pixels valid in both."""
    mask = thumb_ok[r] & thumb_ok
    count = mask.sum(axis=1)
    a = np.where(mask, thumbs[r], 0.0)
    b = np.where(mask, thumbs, 0.0)
    safe = np.maximum(count, 1)[:, None]
    a = np.where(mask, a - a.sum(axis=1, keepdims=True) / safe, 0.0)
    b = np.where(mask, b - b.sum(axis=1, keepdims=True) / safe, 0.0)
    denom = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = (a * b).sum(axis=1) / denom
    corr[(count < _MIN_COMMON_FRACTION * thumbs.shape[1]) | (denom == 0)] = np.nan
    return corr


def _block_scores(
    start: int,
    stop: int,
    bits: np.ndarray,
    valid: np.ndarray,
    standardized: np.ndarray,
    masked_rows: dict[int, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """dHash distances and correlations of rows start:stop against every item."""
    diff = np.zeros((stop - start, len(bits)))
    common = np.zeros_like(diff)
    for k in range(bits.shape[1]):
        both = valid[start:stop, k, None] & valid[None, :, k]
        diff += _popcount((bits[start:stop, k, None] ^ bits[None, :, k]) & both)
        common += _popcount(both)
    with np.errstate(divide="ignore", invalid="ignore"):
        dist = np.where(common >= _MIN_COMMON_FRACTION * _DHASH_BITS, diff * _DHASH_BITS / common, np.inf)
    corr = standardized[start:stop] @ standardized.T
    # Pairs with a truncated member: use the correlation over pixels valid in both.
    for m, row in masked_rows.items():
        corr[:, m] = row[start:stop]
        if start <= m < stop:
            corr[m - start, :] = row
    return dist, corr


def check_thresholds(max_distance: float, min_correlation: float) -> None:
    """Refuse thresholds no pair could meet sensibly (NaN included: it would silently link nothing).

    Callers that scan many files first (``fracsight audit``) call this before the slow part.
    """
    if not max_distance >= 0:
        raise ValueError(f"max_distance must be >= 0 (bits of 256), got {max_distance}")
    if not -1.0 <= min_correlation <= 1.0:
        raise ValueError(f"min_correlation must be in [-1, 1], got {min_correlation}")


def find_duplicate_pairs(
    fingerprints: Sequence[Fingerprint],
    max_distance: float = DEFAULT_MAX_DISTANCE,
    min_correlation: float = DEFAULT_MIN_CORRELATION,
) -> list[DuplicatePair]:
    """Every pair (i < j) that is an exact or near duplicate (see the module docstring for the rule).

    All pairs are compared, in blocks (one matrix product of 1,024-long thumbnails per block):
    about a second for FracAtlas' 3,229 images, minutes for 50,000.
    """
    check_thresholds(max_distance, min_correlation)
    n = len(fingerprints)
    if n == 0:
        return []
    bits = np.array([_words(fp.dhash) for fp in fingerprints], dtype=np.uint64)
    valid = np.array([_words(fp.dhash_valid) for fp in fingerprints], dtype=np.uint64)
    thumbs = np.stack([_thumb_array(fp) for fp in fingerprints])
    thumb_ok = np.stack([_valid_array(fp) for fp in fingerprints])
    masked_rows = {
        int(m): _masked_correlations(thumbs, thumb_ok, int(m)) for m in np.nonzero(~thumb_ok.all(1))[0]
    }
    centred = thumbs - thumbs.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    standardized = np.divide(centred, norms, out=np.zeros_like(centred), where=norms > 0)

    first_with_digest: dict[str, int] = {}
    exact_of = [first_with_digest.setdefault(fp.sha256, idx) for idx, fp in enumerate(fingerprints)]
    pairs: list[DuplicatePair] = []
    block = 512
    for start in range(0, n, block):
        stop = min(start + block, n)
        dist, corr = _block_scores(start, stop, bits, valid, standardized, masked_rows)
        linked = (dist <= max_distance) | (np.nan_to_num(corr, nan=-1.0) >= min_correlation)
        for r, c in zip(*np.nonzero(linked), strict=True):
            i, j = start + int(r), int(c)
            if i < j:
                kind = (
                    DuplicateKind.EXACT
                    if fingerprints[i].sha256 == fingerprints[j].sha256
                    else DuplicateKind.NEAR
                )
                pairs.append(DuplicatePair(i, j, kind, float(dist[r, c]), float(corr[r, c])))
    seen = {(p.i, p.j) for p in pairs}
    for j, i in enumerate(exact_of):  # identical pixels are duplicates whatever the scores say
        if i != j and (i, j) not in seen:
            pairs.append(DuplicatePair(i, j, DuplicateKind.EXACT, 0.0, 1.0))
    return sorted(pairs, key=lambda p: (p.i, p.j))


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


def groups_from_pairs(n: int, pairs: Iterable[tuple[int, int] | DuplicatePair]) -> list[int]:
    """Group id per item (0..k-1, numbered by first appearance) for the transitive closure of ``pairs``."""
    uf = _UnionFind(n)
    for pair in pairs:
        i, j = (pair.i, pair.j) if isinstance(pair, DuplicatePair) else pair
        uf.union(i, j)
    ids: dict[int, int] = {}
    return [ids.setdefault(uf.find(i), len(ids)) for i in range(n)]


def duplicate_groups(
    fingerprints: Sequence[Fingerprint],
    max_distance: float = DEFAULT_MAX_DISTANCE,
    min_correlation: float = DEFAULT_MIN_CORRELATION,
) -> list[int]:
    """A group id per fingerprint; items linked (transitively) as duplicates share one.

    Exact pixel duplicates are always grouped. Ids are 0..k-1 by first appearance, so an image
    without duplicates has a group of its own.
    """
    return groups_from_pairs(
        len(fingerprints), find_duplicate_pairs(fingerprints, max_distance, min_correlation)
    )


@dataclass(frozen=True)
class ImageScan:
    """What reading one file told us: its fingerprint, or why it could not be read.

    ``truncated`` means the file's image data ends early (:mod:`fracsight.io` says so); the
    fingerprint then comes from the part that decodes, or is None when io refused the file for
    having too little of it (``decoded_fraction`` is then unknown: None).
    """

    path: str
    fingerprint: Fingerprint | None
    truncated: bool
    error: str | None  # why the image could not be decoded at all, else None
    file_bytes: int
    decoded_fraction: float | None = 1.0  # share of a truncated JPEG's pixels really decoded (not grey fill)


def truncation_fill_mask(pixels: np.ndarray) -> np.ndarray:
    """True where a truncated JPEG was never decoded: 8 x 8 blocks entirely equal to the fill grey 128.

    ``pixels`` are 8-bit values in the file's stored frame (where the blocks align). Only
    meaningful for images known to be truncated: real radiographs essentially never hold 64
    identical pixels of exactly that value.
    """
    h, w = pixels.shape
    hb, wb = -(-h // 8) * 8, -(-w // 8) * 8
    padded = np.full((hb, wb), _TRUNCATION_FILL, dtype=pixels.dtype)
    padded[:h, :w] = pixels
    blocks = (padded.reshape(hb // 8, 8, wb // 8, 8) == _TRUNCATION_FILL).all(axis=(1, 3))
    return np.repeat(np.repeat(blocks, 8, axis=0), 8, axis=1)[:h, :w]


# EXIF orientation -> the orientation that turns the displayed frame back to the stored one.
_UNDO_ORIENTATION = {6: 8, 8: 6}


def _decoded_mask(radiograph) -> tuple[np.ndarray | None, float]:
    """(valid-pixel mask as displayed, decoded share) of a truncated 8-bit JPEG; (None, 1.0) otherwise."""
    from fracsight.io.pillow_reader import orient_as_displayed

    meta = radiograph.metadata
    if not meta.get("truncated") or meta.get("bits_stored") != 8:
        return None, 1.0
    orientation = int(meta.get("exif_orientation", 1))
    stored = orient_as_displayed(radiograph.pixels, _UNDO_ORIENTATION.get(orientation, orientation))
    levels = np.rint(stored * np.float32(255.0)).astype(np.uint8)
    valid = orient_as_displayed(~truncation_fill_mask(levels), orientation)
    return valid, float(valid.mean())


def scan_image(path: str | os.PathLike[str]) -> ImageScan:
    """Read one image with :func:`fracsight.io.read_radiograph` and fingerprint it (as displayed).

    Runs in worker processes (:func:`scan_images`); never raises for a bad file.
    """
    from fracsight.io import RefusedInput, TruncatedImage, read_radiograph

    p = Path(path)
    size = 0
    try:
        size = p.stat().st_size
        radiograph = read_radiograph(p)
    except TruncatedImage as exc:
        return ImageScan(str(p), None, True, exc.reason, size, None)
    except RefusedInput as exc:
        return ImageScan(str(p), None, False, f"cannot decode image: {exc.reason}", size)
    except OSError as exc:
        return ImageScan(str(p), None, False, f"cannot read file: {exc.strerror or exc}", size)
    except Exception as exc:  # noqa: BLE001 - one bad file must never stop a scan of thousands
        return ImageScan(str(p), None, False, f"cannot decode image: {type(exc).__name__}: {exc}", size)
    truncated = bool(radiograph.metadata.get("truncated"))
    # The truncation mask is found in the stored frame, where the 8 x 8 blocks align.
    valid, fraction = _decoded_mask(radiograph)
    try:
        fingerprint = image_fingerprint(radiograph.pixels, valid)
    except FingerprintError as exc:
        return ImageScan(str(p), None, truncated, str(exc), size, fraction)
    return ImageScan(str(p), fingerprint, truncated, None, size, fraction)


def scan_images(paths: Iterable[str | os.PathLike[str]], workers: int | None = None) -> list[ImageScan]:
    """:func:`scan_image` over many files in worker processes (default: one per core, at most 2)."""
    items = [str(p) for p in paths]
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    if workers <= 1 or len(items) < 16:
        return [scan_image(p) for p in items]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(scan_image, items, chunksize=max(1, len(items) // (workers * 8))))


def group_images(
    paths: Sequence[str | os.PathLike[str]],
    max_distance: float = DEFAULT_MAX_DISTANCE,
    min_correlation: float = DEFAULT_MIN_CORRELATION,
    workers: int | None = None,
) -> list[int]:
    """Duplicate-group id per image file (see :func:`duplicate_groups`), 0..k-1 by first appearance.

    A file that cannot be decoded (or that io refuses as mostly missing) gets a group of its own and
    a logged warning (file name only); truncated files io reads are fingerprinted from the part
    that decodes.
    """
    scans = scan_images(paths, workers=workers)
    readable = [i for i, s in enumerate(scans) if s.fingerprint is not None]
    for s in scans:
        if s.fingerprint is None:
            log.warning("%s: not grouped (%s)", Path(s.path).name, s.error)
    fingerprints = [scans[i].fingerprint for i in readable]
    pairs = find_duplicate_pairs(fingerprints, max_distance, min_correlation)  # type: ignore[arg-type]
    return groups_from_pairs(len(scans), [(readable[p.i], readable[p.j]) for p in pairs])
