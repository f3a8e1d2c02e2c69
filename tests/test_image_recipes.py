"""Image recipes end to end on sklearn's digits with tiny networks: train, sample (labels, guidance
schedules, PNG grids), inpaint, latent and SymmFlow runs, eval metrics, and the errors users hit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from flowforge.cli.main import main
from flowforge.data import load_digits
from flowforge.data.png import read_png
from flowforge.recipes import evaluate, generator, inpaint, sample, train_recipe

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
TINY = {"dataset": "digits", "channels": 8, "mults": "1-2", "attention": "1", "blocks": 1, "warmup": 0}


def _train(name: str, out: Path, steps: int = 4, **extra) -> Path:
    overrides = {**TINY, "batch_size": 16, "threads": 1, "sample_every": 0, **extra}
    from flowforge.recipes import get_recipe

    overrides = {k: v for k, v in overrides.items() if k in get_recipe(name).defaults}
    train_recipe(name, overrides=overrides, out=out, steps=steps, progress=False)
    return out


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    return _train("digits", tmp_path_factory.mktemp("img") / "digits", steps=6, sample_every=3)


def test_training_writes_sample_grids_every_so_often(digits_run):
    grids = sorted((digits_run / "samples").glob("step_*.png"))
    assert [g.name for g in grids] == ["step_0000003.png", "step_0000006.png"]
    img = read_png(grids[-1])
    assert img.ndim == 2 and img.shape[0] == img.shape[1] > 8 * 8  # an 8x8 grid of 8x8 digits


def test_samples_are_integer_pixels_of_the_requested_class(digits_run):
    x = sample(digits_run, 12, seed=1, steps=3, label=4, guidance=2.0)
    assert x.shape == (12, 1, 8, 8) and x.dtype == torch.uint8 and int(x.max()) <= 16
    again = sample(digits_run, 12, seed=1, steps=3, label=4, guidance=2.0)
    assert torch.equal(x, again)
    gen, y = generator(digits_run), {"y": torch.full((12,), 4)}
    from flowforge.core.guidance import RAAG

    def unit(**kw):
        return gen.sample_unit(12, cond=y, steps=3, generator=torch.Generator().manual_seed(1), **kw)

    plain, const, raag = unit(), unit(guidance=2.0), unit(schedule=RAAG(w_max=2.0))
    assert not torch.equal(plain, const) and not torch.equal(const, raag)  # RAAG's weight is not 2


def test_eval_reports_image_metrics_and_what_it_sampled_with(digits_run):
    res = evaluate(
        digits_run, n_samples=40, seed=0, solver="heun", steps=2, guidance=3.0, guidance_schedule="interval"
    )
    assert {"fd", "acc", "precision", "recall"} <= res.keys()
    assert res["fd"] > 0 and 0 <= res["acc"] <= 1
    assert res["nfe"] == 4 and res["solver"] == "heun" and res["steps"] == 2  # Heun: 2 calls a step
    assert res["guidance_schedule"] == "interval" and res["guidance"] == 3.0 and res["source_noise"] == "iid"


def test_cli_sample_png_grid_and_bad_guidance_schedule(digits_run, tmp_path, capsys):
    assert (
        main(["sample", str(digits_run), "--n", "16", "--steps", "2", "--out", str(tmp_path / "g.png")]) == 0
    )
    assert read_png(tmp_path / "g.png").max() > 0
    code = main(
        [
            "sample",
            str(digits_run),
            "--n",
            "4",
            "--out",
            str(tmp_path / "s.npy"),
            "--guidance-schedule",
            "raa",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "raag" in err and "guidance schedule" in err
    assert (
        main(["sample", str(digits_run), "--n", "4", "--out", str(tmp_path / "s.npy"), "--label", "12"]) == 2
    )
    assert "0..9" in capsys.readouterr().err


def test_unconditional_runs_refuse_labels_and_guidance(tmp_path, capsys):
    run = _train("digits", tmp_path / "u", steps=2, conditional=False)
    code = main(["sample", str(run), "--n", "4", "--out", str(tmp_path / "s.npy"), "--guidance", "2"])
    assert code == 2 and "--guidance" in capsys.readouterr().err
    with pytest.raises(ValueError, match="acc needs a class-conditional run"):
        evaluate(run, n_samples=8, metrics=["acc"], steps=1)


def test_inpainting_keeps_the_known_pixels_exactly(tmp_path, capsys):
    run = _train("mnist-inpaint", tmp_path / "inp", steps=3, sample_every=2)
    assert sorted(p.name for p in (run / "samples").glob("*.png")) == ["step_0000002.png", "step_0000003.png"]
    img = load_digits("test").x[:3]
    hole = torch.zeros(3, 1, 8, 8, dtype=torch.bool)
    hole[:, :, :, 4:] = True
    out = inpaint(run, img, hole, seed=0, steps=2)
    assert out.shape == img.shape and out.dtype == torch.uint8
    assert torch.equal(out[..., :4], img[..., :4])
    # through the CLI, with a PNG mask (white = fill) and a .npy image
    np.save(tmp_path / "img.npy", img[0, 0].numpy())
    from flowforge.data.png import save_image_grid

    mask = np.zeros((1, 1, 8, 8), np.uint8)
    mask[..., :, 4:] = 255
    save_image_grid(mask, tmp_path / "mask.png", pad=0)
    args = ["inpaint", str(run), "--image", str(tmp_path / "img.npy"), "--mask", str(tmp_path / "mask.png")]
    assert main([*args, "--out", str(tmp_path / "f.npy"), "--steps", "2"]) == 0
    f = np.load(tmp_path / "f.npy")
    assert f.shape == (1, 1, 8, 8) and (f[0, 0, :, :4] == img[0, 0, :, :4].numpy()).all()
    res = evaluate(run, n_samples=8, steps=2)
    assert res["known"] == 0.0 and 0 <= res["fill_acc"] <= 1 and res["hole_fraction"] == 0.5
    bad = np.zeros((5, 5), np.uint8)
    np.save(tmp_path / "bad.npy", bad)
    code = main([*args[:-1], str(tmp_path / "bad.npy"), "--out", str(tmp_path / "f.npy")])
    assert code == 2 and "same size" in capsys.readouterr().err


def test_inpainting_guides_towards_the_kept_pixels(tmp_path):
    from flowforge.recipes import get_recipe, read_config
    from flowforge.recipes.images import image_fm_data

    # context dropout: the all-hole mask (zero extra channels) stands for "nothing known"
    config = {**get_recipe("mnist-inpaint").defaults, **TINY, "context_dropout": 1.0}
    stream, _ = image_fm_data(config)
    assert not stream(4, torch.Generator().manual_seed(0))["extra"].any()
    config["context_dropout"] = 0.0
    assert image_fm_data(config)[0](4, torch.Generator().manual_seed(0))["extra"].any()

    run = _train("mnist-inpaint", tmp_path / "inp", steps=2)
    assert read_config(run)["context_dropout"] == 0.1
    img, hole = load_digits("test").x[:2], torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    hole[..., 4:] = True
    plain = inpaint(run, img, hole, seed=0, steps=2)
    guided = inpaint(run, img, hole, seed=0, steps=2, guidance=3.0)
    assert torch.equal(guided[..., :4], img[..., :4]) and not torch.equal(plain, guided)
    res = evaluate(run, n_samples=4, steps=2, guidance=2.0)
    assert res["known"] == 0.0
    old = _train("mnist-inpaint", tmp_path / "old", steps=1, context_dropout=0.0)
    with pytest.raises(ValueError, match="context_dropout=0.1"):
        inpaint(old, img, hole, seed=0, steps=2, guidance=3.0)


def test_inpainting_masks_can_be_weighted_and_runs_fine_tuned(tmp_path):
    from flowforge.core import masks as M
    from flowforge.recipes import get_recipe, load_run
    from flowforge.recipes.images import build_image_fm, image_fm_data

    config = {**get_recipe("mnist-inpaint").defaults, **TINY, "context_dropout": 0.0}
    g = torch.Generator().manual_seed(0)
    mixed = image_fm_data(config)[0](64, g)["extra"][:, -1]  # the mask channel
    halves = [M.half_mask(1, 8, 8, side)[0, 0] for side in M.SIDES]
    only_halves = image_fm_data({**config, "mask_kinds": "half"})[0](64, g)["extra"][:, -1]
    assert all(any(torch.equal(m, h) for h in halves) for m in only_halves)
    assert not all(any(torch.equal(m, h) for h in halves) for m in mixed)
    with pytest.raises(ValueError, match="unknown kind 'halves'"):
        image_fm_data({**config, "mask_kinds": "halves-box"})
    with pytest.raises(FileNotFoundError, match="init_from="):
        image_fm_data({**config, "init_from": str(tmp_path / "missing")})
    base = _train("mnist-inpaint", tmp_path / "base", steps=2)
    start, cfg = load_run(base)
    tuned = _train(
        "mnist-inpaint", tmp_path / "tuned", steps=1, init_from=str(base), mask_kinds="half-half-box"
    )
    fresh = build_image_fm({**cfg, "init_from": str(base), "seed": 5})  # starts from base's EMA weights
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), start.state_dict().values()))
    assert load_run(tuned)[1]["mask_kinds"] == "half-half-box"
    with pytest.raises(ValueError, match="does not fit"):
        _train("mnist-inpaint", tmp_path / "wide", steps=1, init_from=str(base), channels=16)


def test_inpaint_needs_an_inpainting_run(digits_run, tmp_path):
    with pytest.raises(ValueError, match="mnist-inpaint"):
        inpaint(digits_run, load_digits("test").x[:1], torch.ones(1, 1, 8, 8, dtype=torch.bool))


def test_latent_runs_build_on_an_autoencoder_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="flowforge train mnist-ae"):
        _train("mnist-latent", tmp_path / "nope", ae_run=str(tmp_path / "missing"), width=16, depth=1)
    ae = _train("mnist-ae", tmp_path / "ae", steps=3, ae_channels="8-8", latent_channels=2)
    assert {"recon", "fd"} <= evaluate(ae).keys()
    lat = _train("mnist-latent", tmp_path / "lat", ae_run=str(ae), width=16, depth=1, heads=2)
    x = sample(lat, 6, steps=2, label=1, guidance=2.0)
    assert x.shape == (6, 1, 8, 8) and x.dtype == torch.uint8
    res = evaluate(lat, n_samples=20, solver="heun", steps=2, metrics=["fd", "acc"])
    assert res["nfe"] == 4 and res["fd"] > 0
    star = _train(
        "mnist-latent-starflow", tmp_path / "star", ae_run=str(ae), width=16, layers="1", head_dim=8
    )
    assert sample(star, 4, label=2).shape == (4, 1, 8, 8)
    # the latent run carries the autoencoder: it samples after the autoencoder run is gone
    import shutil

    shutil.rmtree(ae)
    assert torch.equal(sample(lat, 3, steps=2, seed=5), sample(lat, 3, steps=2, seed=5))


def test_symmflow_run_generates_and_classifies(tmp_path):
    run = _train("digits-symmflow", tmp_path / "sf", steps=3)
    res = evaluate(run, n_samples=20, steps=2)
    assert {"fd", "acc", "cls_acc"} <= res.keys() and res["classify_steps"] == 1
    assert sample(run, 5, steps=2, label=7).shape == (5, 1, 8, 8)


def test_semantic_run_follows_maps(tmp_path):
    run = _train("mnist-semantic", tmp_path / "sem", width=16, depth=1, patch=2, seg_size=4, heads=2)
    res = evaluate(run, n_samples=20, steps=2, metrics=["iou", "acc"], guidance=2.0)
    assert 0 <= res["iou"] <= 1 and 0 <= res["acc"] <= 1
    assert sample(run, 4, steps=2, label=3).shape == (4, 1, 8, 8)
