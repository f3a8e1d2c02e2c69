"""Inpainting masks: shapes, binary values, exact halves, seeds, hole-fraction spread, extra channels, paste."""

from __future__ import annotations

import pytest
import torch

from flowforge.core.masks import KINDS, SIDES, half_mask, inpaint_extra, paste, random_masks


def _holes(m):
    return 1.0 - m.mean((1, 2, 3))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [(8, 8), (28, 28), (6, 10)])
def test_random_masks_are_binary_with_the_right_shape(kind, size):
    h, w = size
    m = random_masks(40, h, w, generator=torch.Generator().manual_seed(0), kinds=(kind,), dtype=torch.float64)
    assert m.shape == (40, 1, h, w) and m.dtype == torch.float64
    assert bool(((m == 0) | (m == 1)).all())
    f = _holes(m)
    assert bool((f > 0).all()) and bool((f < 1).all()), "every mask has both a hole and known pixels"


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("size", [(8, 8), (28, 28), (4, 6)])
def test_half_masks_remove_exactly_half_on_the_named_side(side, size):
    h, w = size
    m = half_mask(3, h, w, side)
    assert m.shape == (3, 1, h, w)
    assert bool((m.sum((1, 2, 3)) == h * w / 2).all())
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    hole = {"left": cols < w // 2, "right": cols >= w // 2, "top": rows < h // 2, "bottom": rows >= h // 2}[
        side
    ]
    assert torch.equal(m[0, 0] == 0, hole)
    # odd sizes: the hole is the smaller part
    assert int((half_mask(1, 3, 5, side) == 0).sum()) == (2 * 3 if side in ("left", "right") else 1 * 5)
    # "half" drawn at random is exactly 50% too
    r = random_masks(16, h, w, generator=torch.Generator().manual_seed(1), kinds=("half",))
    assert bool((_holes(r) == 0.5).all())


def test_seeds_reproduce_and_differ():
    def draw(seed):
        return random_masks(32, 28, 28, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3), draw(4))


@pytest.mark.parametrize("kind", ["box", "strokes"])
@pytest.mark.parametrize("size", [8, 28])
def test_hole_fractions_cover_ten_to_seventy_percent(kind, size):
    m = random_masks(400, size, size, generator=torch.Generator().manual_seed(2), kinds=(kind,))
    f = _holes(m)
    q05, q50, q95 = torch.quantile(f, torch.tensor([0.05, 0.5, 0.95])).tolist()
    assert float(f.min()) >= 0.09 and float(f.max()) <= 0.8
    assert q05 < 0.2 and 0.3 < q50 < 0.5 and q95 > 0.6
    if kind == "strokes":  # painted until the drawn target is reached, so never below the range
        assert float(f.min()) >= 0.1


def test_strokes_stop_just_after_the_target_and_kinds_are_mixed():
    m = random_masks(
        64, 28, 28, generator=torch.Generator().manual_seed(5), kinds=("strokes",), hole=(0.3, 0.3)
    )
    f = _holes(m)
    assert float(f.min()) >= 0.3 and float(f.max()) < 0.4  # overshoot of at most one brush segment
    mixed = _holes(random_masks(300, 8, 8, generator=torch.Generator().manual_seed(6)))
    share_half = float((mixed == 0.5).float().mean())
    assert 0.25 < share_half < 0.45  # a third are halves (plus the odd box or stroke mask at exactly 50%)


def test_inpaint_extra_is_the_masked_image_and_the_mask():
    g = torch.Generator().manual_seed(7)
    x = torch.rand(5, 3, 8, 8, generator=g) * 2 - 1
    m = random_masks(5, 8, 8, generator=g)
    e = inpaint_extra(x, m)
    assert e.shape == (5, 4, 8, 8)
    assert torch.equal(e[:, 3:], m) and torch.equal(e[:, :3], x * m)
    assert bool((e[:, :3][(m == 0).expand(-1, 3, -1, -1)] == 0).all())
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        inpaint_extra(x, m[:, :, :4])
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        inpaint_extra(x, m.expand(-1, 3, -1, -1))


def test_paste_keeps_known_pixels_exactly():
    g = torch.Generator().manual_seed(8)
    known = torch.randn(6, 2, 28, 28, generator=g, dtype=torch.float64) * 1e6
    gen = torch.randn(6, 2, 28, 28, generator=g, dtype=torch.float64)
    gen[0, 0, 0, 0] = float("nan")
    m = random_masks(6, 28, 28, generator=g)
    m[0, 0, 0, 0] = 1.0
    out = paste(gen, known, m)
    keep = (m == 1).expand_as(out)
    assert torch.equal(out[keep], known[keep]) and torch.equal(out[~keep], gen[~keep])
    with pytest.raises(ValueError, match="same shape"):
        paste(gen[:, :1], known, m)


def test_bad_options_get_clear_errors():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="subset of"):
        random_masks(2, 8, 8, generator=g, kinds=("circle",))
    with pytest.raises(ValueError, match="0 < lo <= hi < 1"):
        random_masks(2, 8, 8, generator=g, hole=(0.5, 1.0))
    with pytest.raises(ValueError, match="unknown side"):
        half_mask(2, 8, 8, "middle")
    assert random_masks(0, 8, 8, generator=g).shape == (0, 1, 8, 8)
