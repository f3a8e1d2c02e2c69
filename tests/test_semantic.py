"""Coarse semantic maps of digit images and the agreement of generated images with them."""

from pathlib import Path

import pytest
import torch

from flowforge.data import (
    BACKGROUND,
    SEG_CLASSES,
    load_mnist,
    semantic_agreement,
    semantic_map,
    stroke_cells,
)

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def blank(n: int = 1, size: int = 28) -> torch.Tensor:
    return torch.zeros(n, 1, size, size, dtype=torch.uint8)


def test_constants():
    assert (SEG_CLASSES, BACKGROUND) == (11, 10)


def test_hand_made_map():
    img = blank(2)
    img[0, 0, 0:4, 0:4] = 255  # cell (0, 0) fully inked
    img[0, 0, 13, 22] = 200  # one pixel: row 13 // 4 = 3, column 22 // 4 = 5
    img[0, 0, 27, 27] = 100  # too faint (100 / 255 < 0.5)
    img[1, 0, 8:12, 4:24] = 255  # a bar over row 2, columns 1..5
    m = semantic_map(img, torch.tensor([3, 8]))
    assert m.shape == (2, 7, 7) and m.dtype == torch.int64
    want0 = torch.full((7, 7), BACKGROUND)
    want0[0, 0] = want0[3, 5] = 3
    assert torch.equal(m[0], want0)
    want1 = torch.full((7, 7), BACKGROUND)
    want1[2, 1:6] = 8
    assert torch.equal(m[1], want1)


def test_float_and_uint8_inputs_agree_and_threshold_is_inclusive():
    img = blank(1)
    img[0, 0, 5, 5] = 128  # 0.502 >= 0.5
    img[0, 0, 20, 20] = 127  # 0.498 < 0.5
    as_float = img.float() / 255 * 2 - 1
    a = semantic_map(img, torch.tensor([1]))
    assert torch.equal(a, semantic_map(as_float, torch.tensor([1])))
    assert a[0, 1, 1] == 1 and a[0, 5, 5] == BACKGROUND and (a == 1).sum() == 1
    img[0, 0, 5, 5] = 255
    assert stroke_cells(img, threshold=1.0).sum() == 1  # a cell whose maximum equals the threshold counts


def test_mean_reduction_and_other_grids():
    img = blank(1)
    img[0, 0, 0, 0:4] = 255  # a quarter of cell (0, 0)
    assert stroke_cells(img, reduce="max")[0, 0, 0]
    assert not stroke_cells(img, reduce="mean", threshold=0.5)[0, 0, 0]
    assert stroke_cells(img, reduce="mean", threshold=0.25)[0, 0, 0]
    digits = blank(1, 8)
    digits[0, 0, 7, 0] = 16
    m = semantic_map(digits, torch.tensor([5]), grid=4, levels=17)
    assert m.shape == (1, 4, 4) and m[0, 3, 0] == 5 and (m == 5).sum() == 1


def test_agreement_counts():
    img = -torch.ones(2, 1, 28, 28)
    img[0, 0, 0:4, 0:8] = 1.0  # cells (0, 0), (0, 1)
    seg = torch.full((2, 7, 7), BACKGROUND)
    seg[0, 0, 0] = seg[0, 6, 6] = 2  # (0, 0) hit, (6, 6) missed, (0, 1) extra
    seg[1] = 11  # the null value counts as background; image 1 is blank: nothing to get wrong
    r = semantic_agreement(img, seg)
    assert r == {"iou": pytest.approx(1 / 3), "precision": 0.5, "recall": 0.5}
    perfect = semantic_agreement(img, semantic_map(img, torch.tensor([4, 4])))
    assert perfect == {"iou": 1.0, "precision": 1.0, "recall": 1.0}
    assert semantic_agreement(-torch.ones(1, 1, 28, 28), torch.full((1, 7, 7), BACKGROUND))["iou"] == 1.0


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        semantic_map(torch.zeros(2, 28, 28), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="grid=5 must divide"):
        semantic_map(blank(1), torch.tensor([1]), grid=5)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.9"):
        semantic_map(blank(1), torch.tensor([10]))
    with pytest.raises(ValueError, match="labels must be integer"):
        semantic_map(blank(2), torch.tensor([1]))
    with pytest.raises(ValueError, match="uint8 pixels or floats"):
        semantic_map(blank(1).long(), torch.tensor([1]))
    with pytest.raises(ValueError, match="reduce must be"):
        stroke_cells(blank(1), reduce="median")
    with pytest.raises(ValueError, match=r"seg must be \(N, G, G\)"):
        semantic_agreement(blank(2), torch.zeros(3, 7, 7, dtype=torch.long))


@pytest.mark.skipif(not MNIST.is_dir(), reason=f"MNIST files not found at {MNIST}")
def test_mnist_maps_are_plausible():
    s = load_mnist(MNIST, "test", download=False)
    x, y = s.x[:500], s.y[:500]
    m = semantic_map(x, y)
    strokes = (m != BACKGROUND).sum((1, 2)).float()
    assert 8 < strokes.mean() < 25 and strokes.min() >= 3  # every digit inks a handful of the 49 cells
    assert torch.equal(m.masked_fill(m == BACKGROUND, -1).amax((1, 2)), y)  # stroke cells carry the label
    r = semantic_agreement(x.float() / 127.5 - 1, m)  # the data agree with their own maps
    assert r["iou"] == 1.0
