"""Two-stage inpainting: ClassPosterior (p(y | kept pixels)) and class-conditional inpainting runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from flowforge.core import masks as M
from flowforge.data import load_digits
from flowforge.inverse import ClassPosterior
from flowforge.recipes import evaluate, generator, get_recipe, inpaint, load_run, train_recipe

TINY = {"dataset": "digits", "channels": 8, "mults": "1-2", "attention": "1", "blocks": 1, "warmup": 0}


class FixedLogits(nn.Module):
    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, extra: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(extra.shape[0], -1)


def _train(name: str, out: Path, steps: int = 3, **extra) -> Path:
    overrides = {**TINY, "batch_size": 16, "threads": 1, "sample_every": 0, "width": 8, **extra}
    overrides = {k: v for k, v in overrides.items() if k in get_recipe(name).defaults}
    train_recipe(name, overrides=overrides, out=out, steps=steps, progress=False)
    return out


def test_class_posterior_loss_and_tempered_draws():
    logits = torch.tensor([2.0, 0.5, -1.0, 0.0], dtype=torch.float64)
    post = ClassPosterior(FixedLogits(logits), num_classes=4)
    extra, y = torch.zeros(5, 2, 8, 8), torch.tensor([0, 1, 2, 3, 0])
    assert torch.allclose(post.loss({"extra": extra, "y": y}), F.cross_entropy(logits.expand(5, -1), y))
    many = torch.zeros(40_000, 2, 1, 1)
    for tau in (1.0, 0.5):
        draws = post.sample(many, generator=torch.Generator().manual_seed(0), temperature=tau)
        freq = torch.bincount(draws, minlength=4).double() / len(draws)
        assert torch.allclose(freq, (logits / tau).softmax(-1), atol=0.01), tau
    again = post.sample(many[:50], generator=torch.Generator().manual_seed(3))
    assert torch.equal(again, post.sample(many[:50], generator=torch.Generator().manual_seed(3)))


def test_class_posterior_refuses_bad_input():
    post = ClassPosterior(FixedLogits(torch.zeros(4)), num_classes=4)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        post.probs(torch.zeros(1, 2, 8, 8), temperature=0.0)
    with pytest.raises(ValueError, match=r"\(B, E, H, W\)"):
        post(torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match="missing 'y'"):
        post.loss({"extra": torch.zeros(1, 2, 8, 8)})
    with pytest.raises(ValueError, match=r"expected \(B, 3\)"):
        ClassPosterior(FixedLogits(torch.zeros(4)), num_classes=3)(torch.zeros(1, 2, 8, 8))
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        ClassPosterior(FixedLogits(torch.zeros(1)), num_classes=1)


def test_two_stage_inpainting_draws_the_class_from_the_posterior_run(tmp_path):
    from flowforge.recipes.images import build_image_fm, inpaint_cond

    post_run = _train("mnist-class-posterior", tmp_path / "post", steps=3)
    res = evaluate(post_run, n_samples=40)
    cfg_file = post_run / "config.json"
    saved = cfg_file.read_text()
    cfg_file.write_text(saved.replace('"eval_n": ', '"eval_n": 0, "_was": '))
    with pytest.raises(ValueError, match="pass --n 10000"):
        evaluate(post_run)
    cfg_file.write_text(saved)
    assert res["n"] == 40 and 0 <= res["acc"] <= 1 and 0 < res["p_true"] < 1 and res["nll"] > 0
    with pytest.raises(ValueError, match="class_from=RUN"):
        generator(post_run).sample(4)

    base = _train("mnist-inpaint", tmp_path / "base", steps=2)
    b_model, b_cfg = load_run(base)
    # an unconditional run grows a zero class embedding: the fine-tune starts from the base's fill exactly
    grown = build_image_fm({**b_cfg, "conditional": True, "init_from": str(base), "seed": 5})
    x, t = torch.randn(3, 1, 8, 8), torch.rand(3)
    e = M.inpaint_extra(torch.randn(3, 1, 8, 8), M.half_mask(3, 8, 8, "left"))
    with torch.no_grad():
        assert torch.equal(b_model.net(x, t, extra=e), grown.net(x, t, extra=e, y=torch.tensor([1, 5, 10])))
    # the sample-grid monitor fills holes of a conditional run too (every step here)
    cls = _train(
        "mnist-inpaint", tmp_path / "cls", steps=2, conditional=True, init_from=str(base), sample_every=1
    )
    assert len(list((cls / "samples").glob("step_*.png"))) == 2
    c_cfg = load_run(cls)[1]

    known, mask = torch.rand(6, 1, 8, 8) * 2 - 1, M.half_mask(6, 8, 8, "top")
    assert inpaint_cond(c_cfg, known, mask, torch.Generator())["y"].eq(10).all()  # null label: unconditional
    cfg = {**c_cfg, "class_from": str(post_run), "class_temperature": 0.5}
    y = inpaint_cond(cfg, known, mask, torch.Generator().manual_seed(1))["y"]
    post, _ = load_run(post_run)
    post.eval()
    want = post.sample(
        M.inpaint_extra(known, mask), generator=torch.Generator().manual_seed(1), temperature=0.5
    )
    assert torch.equal(y, want)
    with pytest.raises(FileNotFoundError, match="mnist-class-posterior"):
        inpaint_cond({**cfg, "class_from": str(tmp_path / "missing")}, known, mask, torch.Generator())
    with pytest.raises(ValueError, match="give a mnist-class-posterior run"):
        inpaint_cond({**cfg, "class_from": str(base)}, known, mask, torch.Generator())

    img, hole = load_digits("test").x[:2], torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    hole[..., 4:] = True
    out = inpaint(cls, img, hole, seed=0, steps=2, guidance=2.0)
    assert torch.equal(out[..., :4], img[..., :4])

    # class guidance (guide_on=class) with the class drawn from the posterior run, set at inpainting time
    from flowforge.recipes.images import image_fm_generator

    assert image_fm_generator(load_run(cls)[0], {**c_cfg, "guide_on": "class"}).key == "y"
    assert image_fm_generator(load_run(cls)[0], c_cfg).key == "extra"
    over = {"class_from": str(post_run), "class_temperature": 0.1, "guide_on": "class"}
    out_c = inpaint(cls, img, hole, seed=0, steps=2, guidance=3.0, overrides=over)
    assert torch.equal(out_c[..., :4], img[..., :4])
    assert not torch.equal(out_c, out)  # another guided field
    with pytest.raises(ValueError, match="conditional=true"):
        inpaint(base, img, hole, seed=0, steps=2, guidance=2.0, overrides={"guide_on": "class"})
    with pytest.raises(ValueError, match="guide_on"):
        inpaint(cls, img, hole, seed=0, steps=2, overrides={"guide_on": "pixels"})
    with pytest.raises(ValueError, match="cannot override 'steps'"):
        inpaint(cls, img, hole, seed=0, overrides={"steps": 3})
    from flowforge.cli.main import main

    np = pytest.importorskip("numpy")
    np.save(tmp_path / "img.npy", img.numpy())
    np.save(tmp_path / "hole.npy", hole.numpy().astype(np.uint8))
    args = ["inpaint", str(cls), "--image", str(tmp_path / "img.npy"), "--mask", str(tmp_path / "hole.npy")]
    args += ["--out", str(tmp_path / "o.npy"), "--steps", "2", "--guidance", "3", "--guide-on", "class"]
    args += ["--class-from", str(post_run), "--class-temperature", "0.1"]
    assert main(args) == 0
    assert np.array_equal(np.load(tmp_path / "o.npy"), out_c.numpy())
