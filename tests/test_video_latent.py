"""The latent option of the causal video flow (STARFlow-V's latent layout): LatentVideoFlow and its recipe."""

from __future__ import annotations

import pytest
import torch

from flowforge.apps.video import LatentVideoFlow, moving_sprites

F64 = torch.float64
SMALL = {"patch": 2, "blocks": 1, "width": 16, "layers": 1, "deep_layers": 1, "head_dim": 8}


def _model(**kw) -> LatentVideoFlow:
    torch.manual_seed(0)
    args = {"latent_channels": 2, "ae_channels": (8,), "ae_steps": 1, **SMALL, **kw}
    return LatentVideoFlow(3, 8, **args).double()


def _randomise(m: LatentVideoFlow) -> None:
    # zero-initialised output layers would make the flow the identity; random weights test the algebra
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.flow.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def test_decode_encode_shapes_and_standardised_latents():
    m = _model()
    x = moving_sprites(4, frames=3, size=8, seed=0).double()
    u = m.encode(x)
    assert u.shape == (4, 3, 2, 4, 4) and m.decode(u).shape == x.shape
    assert m.decode(u).abs().max() <= 1
    # the first training call is the autoencoder's; the next fixes the statistics from its batch
    m.train()
    m.loss(x)
    assert int(m.steps_done) == 1 and torch.equal(m.latent_std, torch.ones(2, dtype=F64))
    m.loss(x)
    u = m.encode(x)
    assert torch.allclose(u.mean((0, 1, 3, 4)), torch.zeros(2, dtype=F64), atol=1e-9)
    z = m.ae.encode(x.flatten(0, 1))[0]
    assert torch.allclose(u.flatten(0, 1).transpose(0, 1).flatten(1).std(1), torch.ones(2, dtype=F64))
    assert torch.allclose(m.decode(u), m.ae.decode(z).unflatten(0, (4, 3)), atol=1e-12)
    with pytest.raises(ValueError, match="expects videos"):
        m.encode(torch.zeros(4, 3, 8, 8))
    with pytest.raises(ValueError, match="ae_steps"):
        LatentVideoFlow(3, 8, ae_steps=-1)


def test_autoencoder_is_frozen_in_the_flow_phase():
    m = _model(noise_std=0.1)
    x = moving_sprites(4, frames=3, size=8, seed=0).double()
    m.train()
    m.loss(x).backward()
    assert all(p.grad is not None for p in m.ae.parameters())
    assert all(p.grad is None for p in m.flow.parameters())
    m.zero_grad(set_to_none=True)
    m.loss(x).backward()
    assert all(p.grad is None for p in m.ae.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.flow.parameters())


def test_latent_flow_inverse_and_log_det_are_exact():
    m = _model()
    _randomise(m)
    u = torch.randn(2, 3, 2, 4, 4, dtype=F64, generator=torch.Generator().manual_seed(2))
    z, ladj = m.flow(u)
    for method in ("sequential", "jacobi"):
        back, ladj_inv = m.flow.inverse(z, method=method, jacobi_tol=0.0)
        assert torch.allclose(back, u, atol=1e-10), method
        assert torch.allclose(ladj_inv, -ladj, atol=1e-10)
    jac = torch.autograd.functional.jacobian(
        lambda v: m.flow(v.view(1, 3, 2, 4, 4))[0].flatten(), u[:1].flatten()
    )
    assert torch.allclose(ladj[0], torch.linalg.slogdet(jac)[1], atol=1e-9)


def test_causality_across_frames_holds_in_latent_space():
    m = _model()
    _randomise(m)
    x = moving_sprites(2, frames=3, size=8, seed=3).double()
    u = m.encode(x)
    z = m.flow(u)[0]
    x2 = x.clone()
    x2[:, 2] = -x2[:, 2]  # change the last frame only
    u2 = m.encode(x2)
    assert torch.equal(u2[:, :2], u[:, :2])  # per-frame encoder: earlier latents untouched
    z2 = m.flow(u2)[0]
    assert torch.allclose(z2[:, :2], z[:, :2], atol=1e-12) and not torch.allclose(z2[:, 2], z[:, 2])
    # sampling: the first frames of a decoded video do not depend on the last frame's noise
    zn = m.flow.base.sample(2, torch.Generator().manual_seed(4)).double()
    zn2 = zn.clone()
    zn2[:, 2] += 1.0
    a = m.decode(m.flow.inverse(zn, method="jacobi", jacobi_tol=0.0)[0])
    b = m.decode(m.flow.inverse(zn2, method="jacobi", jacobi_tol=0.0)[0])
    assert torch.allclose(a[:, :2], b[:, :2], atol=1e-10) and not torch.allclose(a[:, 2], b[:, 2])


def test_latent_recipe_trains_evaluates_samples_and_is_seeded(tmp_path):
    from flowforge.recipes import evaluate, get_recipe, sample, train_recipe
    from flowforge.train import latest_checkpoint, load_safetensors

    over = {"n_train": 64, "n_test": 48, "eval_samples": 48, "width": 16, "head_dim": 8, "blocks": 1,
            "deep_layers": 1, "denoiser_width": 16, "denoiser_layers": 1, "batch_size": 8, "frames": 4,
            "ae_steps": 2, "ae_channels": "8"}  # fmt: skip
    for run in ("a", "b"):
        train_recipe("sprites-latent-starflow-v", overrides=over, out=tmp_path / run, steps=4, progress=False)
    wa, wb = (
        load_safetensors(next(latest_checkpoint(tmp_path / r).glob("model*.safetensors"))) for r in "ab"
    )
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    res = evaluate(tmp_path / "a")
    assert set(get_recipe("sprites-latent-starflow-v").metrics) <= set(res)
    assert res["jacobi_max_abs_diff"] < 1e-4
    # latents 2x4x4 in 2x2 patches: 4 tokens a frame; the deep block 4 * 4 calls, the shallow 4
    assert res["sequential_passes"] == 4 * 4 + 4 and res["jacobi_passes"] <= res["sequential_passes"]
    assert all(res[f"fd_frames_{k}"] >= 0 for k in ("raw", "tweedie", "learned", "control", "recon"))
    assert res["recon_mse"] >= 0
    s = sample(tmp_path / "a", 2, method="jacobi")
    assert s.shape == (2, 4, 1, 8, 8) and s.abs().max() <= 1
    with pytest.raises(ValueError, match="ae_steps"):
        train_recipe(
            "sprites-latent-starflow-v", overrides={**over, "ae_steps": 4}, out=tmp_path / "c", steps=4
        )
