"""PNG files without an imaging library: image grids written and 8-bit PNGs read with numpy and zlib.

:func:`save_image_grid` tiles a batch of images ``(N, C, H, W)`` (``uint8``, or float in ``[-1, 1]``, the
models' scale) into one PNG, written atomically; :func:`read_png` reads the common 8-bit PNGs (grey, grey +
alpha, RGB, RGBA; every filter type) back into a ``uint8`` array. The format is the W3C's *Portable Network
Graphics (PNG) Specification* (2003): signature, ``IHDR``, ``IDAT`` (zlib of filtered rows), ``IEND``, each
chunk with a CRC-32.

Example:
    >>> import tempfile, torch
    >>> x = torch.linspace(-1, 1, 2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = save_image_grid(x, f"{d}/grid.png", nrow=2, pad=1)
    ...     img = read_png(f"{d}/grid.png")
    >>> img.shape, img.dtype
    ((6, 13, 3), dtype('uint8'))
"""

from __future__ import annotations

import math
import os
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["save_image_grid", "read_png", "to_uint8", "image_grid", "encode_png"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: PNG colour type -> (channels, name); 3 (palette) is refused.
_COLOR_TYPES = {0: (1, "grey"), 2: (3, "RGB"), 4: (2, "grey + alpha"), 6: (4, "RGBA")}
_CONVERT = "convert it to an 8-bit grey or RGB(A) PNG (e.g. PIL: Image.open(p).convert('RGB').save(q)), or give a .npy array"


def to_uint8(images: Any) -> np.ndarray:
    """Images as ``uint8`` numpy: ``uint8`` passes through; floats in ``[-1, 1]`` map to ``round(127.5 (x + 1))``.

    Floats outside ``[-1, 1]`` are clipped; NaN or infinite values are an error. Accepts a torch Tensor or
    a numpy array of any shape.

    Example:
        >>> to_uint8(np.array([-1.0, 0.0, 1.0, 3.0]))
        array([  0, 128, 255, 255], dtype=uint8)
    """
    if hasattr(images, "detach"):  # a torch Tensor, without importing torch here
        images = images.detach().to("cpu")
        images = images.float().numpy() if images.is_floating_point() else images.numpy()
    x = np.asarray(images)
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind != "f":
        raise TypeError(
            f"images must be uint8 (0..255) or float in [-1, 1], got dtype {x.dtype}; "
            "convert with x.astype(np.uint8) or scale to [-1, 1]"
        )
    if not np.isfinite(x).all():
        raise ValueError(
            "images hold NaN or infinite values; check the model's samples (a diverged run?) before saving"
        )
    return np.clip(np.rint((x.astype(np.float64) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def image_grid(
    images: Any, nrow: int | None = None, pad: int = 2, scale: int = 1, pad_value: int = 128
) -> np.ndarray:
    """Tile ``images: (N, C, H, W)`` into one ``uint8`` array ``(H', W')`` (C = 1) or ``(H', W', 3)`` (C = 3).

    Args:
        images: ``uint8`` or float in ``[-1, 1]`` (see :func:`to_uint8`), ``C`` = 1 or 3.
        nrow: images per row; default ``ceil(sqrt(N))``.
        pad: pixels between images and around the grid (before scaling).
        scale: integer up-scaling (nearest neighbour) of the whole grid.
        pad_value: grey level of the padding.

    Returns:
        The grid, ``(rows * (H + pad) + pad) * scale`` by ``(nrow * (W + pad) + pad) * scale`` pixels.
    """
    x = to_uint8(images)
    if x.ndim != 4 or x.shape[1] not in (1, 3) or 0 in x.shape:
        raise ValueError(
            f"images must be (N, C, H, W) with C = 1 (grey) or 3 (RGB) and N, H, W >= 1, got shape {x.shape}; "
            "for one image write images[None]"
        )
    for name, v, lo in (("pad", pad, 0), ("scale", scale, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}; write e.g. {name}={max(lo, 2)}")
    if not isinstance(pad_value, int) or not 0 <= pad_value <= 255:
        raise ValueError(f"pad_value must be an int in 0..255, got {pad_value!r}; write e.g. pad_value=128")
    n, c, h, w = x.shape
    if nrow is None:
        nrow = math.ceil(math.sqrt(n))
    if isinstance(nrow, bool) or not isinstance(nrow, int) or nrow < 1:
        raise ValueError(f"nrow must be an int >= 1, got {nrow!r}; write e.g. nrow=8")
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), pad_value, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[top : top + h, left : left + w] = x[i].transpose(1, 2, 0)
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    return grid[..., 0] if c == 1 else grid


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(image: np.ndarray) -> bytes:
    """The PNG bytes of a ``uint8`` image ``(H, W)`` (grey), ``(H, W, 3)`` (RGB) or ``(H, W, 4)`` (RGBA)."""
    img = np.ascontiguousarray(image)
    if (
        img.dtype != np.uint8
        or img.ndim not in (2, 3)
        or (img.ndim == 3 and img.shape[2] not in (1, 2, 3, 4))
    ):
        raise ValueError(f"encode_png needs uint8 (H, W) or (H, W, 1-4), got {img.dtype} {img.shape}")
    h, w = img.shape[:2]
    channels = 1 if img.ndim == 2 else img.shape[2]
    color = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = img.reshape(h, w * channels)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1)  # filter type 0 (None) on every row
    header = struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0)
    return (
        _SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
        + _chunk(b"IEND", b"")
    )


def save_image_grid(
    images: Any,
    path: str | os.PathLike[str],
    nrow: int | None = None,
    pad: int = 2,
    scale: int = 1,
    *,
    pad_value: int = 128,
) -> Path:
    """Write ``images: (N, C, H, W)`` as one PNG grid, atomically (a temporary file, then a rename).

    Args:
        images: a torch Tensor or numpy array, ``uint8`` (0..255) or float in ``[-1, 1]`` (the models'
            scale: ``-1`` is black, ``1`` white); ``C`` = 1 (grey) or 3 (RGB).
        path: the ``.png`` file; its folder is created when missing.
        nrow: images per row; default ``ceil(sqrt(N))``.
        pad: pixels of padding between and around the images.
        scale: integer up-scaling (nearest neighbour), e.g. 4 for 8x8 digits.
        pad_value: grey level of the padding (mid grey keeps black-background images apart).

    Returns:
        ``path`` as a Path.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = save_image_grid(np.zeros((4, 1, 8, 8), np.uint8), f"{d}/a.png", scale=2)
        ...     read_png(p).shape
        (44, 44)
    """
    grid = image_grid(images, nrow=nrow, pad=pad, scale=scale, pad_value=pad_value)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = encode_png(grid)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _paeth_row(cur: bytearray, prev: bytes, bpp: int) -> None:
    for i in range(len(cur)):
        a = cur[i - bpp] if i >= bpp else 0
        b = prev[i]
        c = prev[i - bpp] if i >= bpp else 0
        p = a + b - c
        pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
        pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
        cur[i] = (cur[i] + pred) & 0xFF


def _average_row(cur: bytearray, prev: bytes, bpp: int) -> None:
    for i in range(len(cur)):
        a = cur[i - bpp] if i >= bpp else 0
        cur[i] = (cur[i] + ((a + prev[i]) >> 1)) & 0xFF


def _unfilter(raw: bytes, h: int, stride: int, bpp: int, path: Path) -> np.ndarray:
    """Undo the per-row filters (0 None, 1 Sub, 2 Up, 3 Average, 4 Paeth) of ``h`` rows of ``stride`` bytes."""
    if len(raw) != h * (stride + 1):
        raise ValueError(
            f"{path}: the image data holds {len(raw)} bytes, the header implies {h * (stride + 1)}; "
            "the file is truncated or damaged"
        )
    data = np.frombuffer(raw, dtype=np.uint8).reshape(h, stride + 1)
    filters, rows = data[:, 0], data[:, 1:]
    out = np.empty((h, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.uint8)
    for y in range(h):
        f, row = int(filters[y]), rows[y]
        if f == 0:
            cur = row
        elif f == 1:  # Sub: running sum along the row, per byte of the pixel
            pad = (-stride) % bpp
            r = np.concatenate([row, np.zeros(pad, np.uint8)]).reshape(-1, bpp).astype(np.uint32)
            cur = (np.cumsum(r, axis=0) & 0xFF).astype(np.uint8).reshape(-1)[:stride]
        elif f == 2:  # Up
            cur = row + prev  # uint8 arithmetic wraps mod 256
        elif f in (3, 4):
            buf = bytearray(row.tobytes())
            (_average_row if f == 3 else _paeth_row)(buf, prev.tobytes(), bpp)
            cur = np.frombuffer(bytes(buf), dtype=np.uint8)
        else:
            raise ValueError(f"{path}: row {y} has filter type {f} (PNG has 0-4); the file is damaged")
        out[y] = cur
        prev = out[y]
    return out


def read_png(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an 8-bit, non-interlaced PNG into ``uint8`` ``(H, W)`` (grey) or ``(H, W, C)`` (C = 2, 3, 4).

    Supported: grey, grey + alpha, RGB and RGBA at 8 bits per sample, all five row filters; CRCs are
    checked. Palette images, other bit depths and interlaced files are refused with a message saying how
    to convert them. Rows filtered with Average or Paeth are decoded in a Python loop: fine for sample
    grids, slow for multi-megapixel photographs.

    Args:
        path: the ``.png`` file.

    Returns:
        The pixels; grey images come back 2-D, others with the channels last (alpha included).

    Raises:
        ValueError: not a PNG, damaged (CRC, truncated), or a kind of PNG this reader does not handle.
    """
    path = Path(path)
    data = path.read_bytes()
    if not data.startswith(_SIGNATURE):
        raise ValueError(f"{path} is not a PNG file (no PNG signature); {_CONVERT}")
    pos, header, idat, ended = len(_SIGNATURE), None, [], False
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        crc = data[pos + 8 + length : pos + 12 + length]
        if len(body) != length or len(crc) != 4:
            raise ValueError(f"{path}: chunk {kind!r} is cut short; the file is truncated")
        if struct.unpack(">I", crc)[0] != zlib.crc32(kind + body):
            raise ValueError(f"{path}: chunk {kind!r} fails its CRC check; the file is damaged")
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            ended = True
            break
    if header is None or not idat or not ended:
        raise ValueError(f"{path}: missing IHDR, IDAT or IEND chunk; the file is truncated or damaged")
    w, h, depth, color, compression, filtering, interlace = header
    if color == 3:
        raise ValueError(
            f"{path} is a palette (indexed-colour) PNG, which read_png does not read; {_CONVERT}"
        )
    if color not in _COLOR_TYPES:
        raise ValueError(f"{path}: unknown PNG colour type {color}; the file is damaged")
    if depth != 8:
        raise ValueError(f"{path} has {depth}-bit samples; read_png reads 8-bit PNGs only; {_CONVERT}")
    if interlace != 0:
        raise ValueError(f"{path} is an interlaced (Adam7) PNG, which read_png does not read; {_CONVERT}")
    if compression != 0 or filtering != 0:
        raise ValueError(f"{path}: unknown compression/filter method; the file is damaged")
    if w == 0 or h == 0:
        raise ValueError(f"{path}: the header says {w}x{h} pixels; the file is damaged")
    channels = _COLOR_TYPES[color][0]
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as e:
        raise ValueError(f"{path}: the image data does not decompress ({e}); the file is damaged") from None
    pixels = _unfilter(raw, h, w * channels, channels, path)
    return pixels.reshape(h, w) if channels == 1 else pixels.reshape(h, w, channels)
