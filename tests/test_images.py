"""Image loaders: MNIST from IDX files (md5-checked), digits, dequantisation and its log-determinant."""

import gzip
import math
from pathlib import Path

import pytest
import torch

from flowforge.data import dequantization_log_det, dequantize, load_digits, load_mnist, quantize

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
needs_mnist = pytest.mark.skipif(not MNIST.is_dir(), reason=f"MNIST files not found at {MNIST}")


@needs_mnist
def test_mnist_test_split_matches_the_canonical_files():
    s = load_mnist(MNIST, "test", download=False)
    assert s.x.shape == (10_000, 1, 28, 28) and s.x.dtype == torch.uint8 and s.levels == 256
    assert s.y.shape == (10_000,) and s.y.min() == 0 and s.y.max() == 9
    assert s.y[:5].tolist() == [7, 2, 1, 0, 4]  # the well-known first test labels
    assert torch.bincount(s.y).tolist()[:2] == [980, 1135]


@needs_mnist
def test_mnist_train_mean_pixel():
    s = load_mnist(MNIST, "train", download=False)
    assert len(s.x) == 60_000
    assert abs(s.x.float().mean().item() / 255 - 0.1307) < 1e-3


def test_mnist_missing_and_damaged_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="put the MNIST files there"):
        load_mnist(tmp_path, "test", download=False)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03" + bytes(12)))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01" + bytes(4)))
    with pytest.raises(ValueError, match="md5 mismatch"):
        load_mnist(tmp_path, "test", download=False)
    with pytest.raises(ValueError, match="split must be"):
        load_mnist(tmp_path, "val", download=False)


def test_digits_split_is_a_partition():
    tr, te, al = load_digits("train"), load_digits("test"), load_digits("all")
    assert len(tr.x) + len(te.x) == len(al.x) == 1797
    assert al.x.max() == 16 and al.levels == 17
    flat = lambda s: {tuple(r.tolist()) + (int(y),) for r, y in zip(s.x.flatten(1), s.y)}  # noqa: E731
    assert flat(tr) | flat(te) == flat(al)


def test_dequantize_round_trip_and_log_det():
    x = torch.randint(0, 17, (500, 1, 8, 8), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    y = dequantize(x, 17, generator=torch.Generator().manual_seed(1))
    assert y.min() >= -1 and y.max() <= 1
    assert torch.equal(quantize(y, 17), x)
    # a uniform density on [-1, 1]^D is 2^-D; on the pixel scale [0, L)^D it must be L^-D
    d, levels = 64, 17
    log_p_model = -d * math.log(2.0)
    assert math.isclose(log_p_model + dequantization_log_det(d, levels), -d * math.log(levels))
