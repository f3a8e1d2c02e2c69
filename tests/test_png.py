"""PNG grids and the 8-bit PNG reader (flowforge.data.png), against a reference filter and other encoders."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch

from flowforge.data import read_png, save_image_grid
from flowforge.data.png import image_grid, to_uint8

SIG = b"\x89PNG\r\n\x1a\n"


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def filtered_png(img: np.ndarray, filters: list[int], *, depth=8, color=None, interlace=0) -> bytes:
    """A reference encoder: row y filtered with ``filters[y % len(filters)]``, written straight from the spec."""
    h, w = img.shape[:2]
    ch = 1 if img.ndim == 2 else img.shape[2]
    color = {1: 0, 2: 4, 3: 2, 4: 6}[ch] if color is None else color
    rows = img.reshape(h, w * ch).astype(np.int64)
    out = bytearray()
    prev = np.zeros(w * ch, np.int64)
    for y in range(h):
        f, cur = filters[y % len(filters)], rows[y]
        line = []
        for i in range(w * ch):
            a = int(cur[i - ch]) if i >= ch else 0
            b = int(prev[i])
            c = int(prev[i - ch]) if i >= ch else 0
            pred = [0, a, b, (a + b) // 2, paeth(a, b, c)][f]
            line.append((int(cur[i]) - pred) % 256)
        out += bytes([f]) + bytes(line)
        prev = cur
    ihdr = struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, interlace)
    return SIG + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(out))) + chunk(b"IEND", b"")


def rand_img(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


# ----------------------------------------------------------------------------------------------------
# writing


@pytest.mark.parametrize("c", [1, 3])
def test_grid_round_trip_uint8(tmp_path, c):
    x = rand_img(5, c, 4, 6)
    path = save_image_grid(x, tmp_path / "sub" / "g.png", nrow=3, pad=2, pad_value=7)
    img = read_png(path)
    assert img.shape == ((2 * 6 + 2, 3 * 8 + 2) if c == 1 else (14, 26, 3))
    if c == 1:
        img = img[..., None]
    for i in range(5):
        r, q = divmod(i, 3)
        tile = img[2 + r * 6 : 2 + r * 6 + 4, 2 + q * 8 : 2 + q * 8 + 6]
        np.testing.assert_array_equal(tile, x[i].transpose(1, 2, 0))
    assert (img[:2] == 7).all() and (img[:, :2] == 7).all()  # padding
    assert (img[8:, 2 + 2 * 8 :] == 7).all()  # the sixth cell is empty
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["g.png"]  # no temporary file left


def test_float_images_map_from_minus_one_to_one(tmp_path):
    x = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0, 2.0, -3.0, 0.999]).reshape(1, 1, 2, 4)
    img = read_png(save_image_grid(x, tmp_path / "f.png", pad=0))
    np.testing.assert_array_equal(img, [[0, 64, 128, 191], [255, 255, 0, 255]])
    assert to_uint8(np.float32(0.0)) == 128 and to_uint8(x.double()).dtype == np.uint8


def test_scale_default_nrow_and_overwrite(tmp_path):
    x = rand_img(10, 1, 3, 3)
    grid = image_grid(x, pad=1, scale=3)  # ceil(sqrt(10)) = 4 per row, 3 rows
    assert grid.shape == ((3 * 4 + 1) * 3, (4 * 4 + 1) * 3)
    np.testing.assert_array_equal(grid[3:12:3, 3:12:3], x[0, 0])
    p = tmp_path / "s.png"
    save_image_grid(x, p, pad=1, scale=3)
    save_image_grid(x[:1], p, pad=0)  # replaced in place
    np.testing.assert_array_equal(read_png(p), x[0, 0])


@pytest.mark.parametrize(
    ("images", "kw", "err", "match"),
    [
        (np.zeros((2, 2, 4, 4), np.uint8), {}, ValueError, r"C = 1 \(grey\) or 3 \(RGB\)"),
        (np.zeros((4, 4), np.uint8), {}, ValueError, r"images\[None\]"),
        (np.zeros((1, 1, 4, 4), np.int64), {}, TypeError, "uint8 .* or float in \\[-1, 1\\]"),
        (np.full((1, 1, 2, 2), np.nan), {}, ValueError, "NaN or infinite"),
        (np.zeros((1, 1, 2, 2), np.uint8), {"scale": 0}, ValueError, "scale must be an int >= 1"),
        (np.zeros((1, 1, 2, 2), np.uint8), {"nrow": 0}, ValueError, "nrow must be an int >= 1"),
        (np.zeros((1, 1, 2, 2), np.uint8), {"pad": -1}, ValueError, "pad must be an int >= 0"),
    ],
)
def test_bad_grids_are_refused(tmp_path, images, kw, err, match):
    with pytest.raises(err, match=match):
        save_image_grid(images, tmp_path / "x.png", **kw)
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------------
# reading


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_reads_every_filter_type(tmp_path, channels):
    shape = (10, 7) if channels == 1 else (10, 7, channels)
    img = rand_img(*shape, seed=channels)
    img[3:6] = img[2]  # repeated rows and smooth ramps exercise Up / Average / Paeth predictions
    img[6] = np.minimum(np.arange(7) * 40, 255)[:, None].repeat(channels, 1).reshape(img[6].shape)
    p = tmp_path / "f.png"
    p.write_bytes(filtered_png(img, [0, 1, 2, 3, 4]))
    np.testing.assert_array_equal(read_png(p), img)


def test_reads_a_png_from_another_encoder(tmp_path):
    Image = pytest.importorskip(
        "PIL.Image", reason="Pillow is not installed; the spec-based encoder above covers it"
    )
    for mode, shape in (("L", (9, 13)), ("LA", (9, 13, 2)), ("RGB", (9, 13, 3)), ("RGBA", (9, 13, 4))):
        img = rand_img(*shape, seed=len(mode))
        img[4:] = np.linspace(0, 255, 13, dtype=np.uint8)[:, None].repeat(1 if len(shape) == 2 else shape[2], 1).reshape(shape[1:])  # fmt: skip
        p = tmp_path / f"{mode}.png"
        Image.fromarray(img, mode=mode).save(p, optimize=True)
        np.testing.assert_array_equal(read_png(p), img, err_msg=mode)
    # and what we write, another decoder reads
    x = rand_img(3, 3, 5, 5)
    ours = np.asarray(Image.open(save_image_grid(x, tmp_path / "ours.png", pad=1)))
    np.testing.assert_array_equal(ours, image_grid(x, pad=1))


def test_reads_matplotlib_imsave(tmp_path):
    plt = pytest.importorskip("matplotlib.pyplot", reason="matplotlib is not installed")
    img = rand_img(6, 8, 3)
    plt.imsave(tmp_path / "m.png", img)
    got = read_png(tmp_path / "m.png")
    assert got.shape == (6, 8, 4)
    np.testing.assert_array_equal(got[..., :3], img)
    assert (got[..., 3] == 255).all()


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: filtered_png(rand_img(2, 2), [0], depth=16), "16-bit samples.*convert it.*or give a .npy"),
        (lambda: filtered_png(rand_img(2, 2), [0], color=3), "palette.*convert it"),
        (lambda: filtered_png(rand_img(2, 2), [0], interlace=1), "interlaced.*convert it"),
        (lambda: b"GIF89a" + bytes(20), "not a PNG file"),
        (lambda: filtered_png(rand_img(2, 2), [0])[:-20], "truncated"),
        (
            lambda: SIG + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)) + chunk(b"IEND", b""),
            "missing IHDR, IDAT or IEND",
        ),
    ],
)
def test_unsupported_or_damaged_files(tmp_path, make, match):
    p = tmp_path / "bad.png"
    p.write_bytes(make())
    with pytest.raises(ValueError, match=match):
        read_png(p)


def test_crc_and_filter_damage(tmp_path):
    good = bytearray(filtered_png(rand_img(4, 4), [0]))
    bad = bytearray(good)
    bad[len(SIG) + 10] ^= 1  # a byte of the IHDR body
    p = tmp_path / "crc.png"
    p.write_bytes(bytes(bad))
    with pytest.raises(ValueError, match="CRC"):
        read_png(p)
    raw = zlib.compress(bytes([9, 1, 2]))  # filter type 9
    ihdr = struct.pack(">IIBBBBB", 2, 1, 8, 0, 0, 0, 0)
    p.write_bytes(SIG + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b""))
    with pytest.raises(ValueError, match="filter type 9"):
        read_png(p)
