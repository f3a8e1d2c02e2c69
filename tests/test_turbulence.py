"""Turbulence app: the pseudo-spectral Navier-Stokes solver against closed forms, storage and decoders,
metrics, the SR-GAN and flow decoders, and the ``turbulence-sr`` recipe."""

from __future__ import annotations

import math

import pytest
import torch

import flowforge.apps.turbulence as T


def _grid(n: int) -> torch.Tensor:
    return torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)


def _taylor_green(n: int) -> torch.Tensor:
    x = _grid(n)
    return 2 * torch.sin(x)[None, :] * torch.sin(x)[:, None]  # psi = sin x sin y, omega = 2 psi


# ---------------------------------------------------------------- solver
def test_taylor_green_decays_at_the_exact_rate():
    n, nu, t = 32, 0.05, 1.3
    w0 = _taylor_green(n)[None]
    w = T.NavierStokes2D(n, nu).run(w0, t=t, dt=0.05)
    # u.grad(omega) = 0 for a single-|k| field, so omega(t) = omega(0) exp(-nu |k|^2 t), |k|^2 = 2
    assert torch.allclose(w, w0 * math.exp(-2 * nu * t), atol=1e-13, rtol=0)
    # with drag mu the rate is nu |k|^2 + mu
    w = T.NavierStokes2D(n, nu, drag=0.2).run(w0, t=t, dt=0.05)
    assert torch.allclose(w, w0 * math.exp(-(2 * nu + 0.2) * t), atol=1e-13, rtol=0)


def test_inviscid_dealiased_solver_conserves_energy_and_enstrophy():
    n = 32
    w0 = T.random_vorticity(2, n, k_peak=3.0, energy=0.5, generator=torch.Generator().manual_seed(1))
    ns = T.NavierStokes2D(n, 0.0)
    w = ns.run(w0, t=1.0, dt=0.01)
    assert (w - w0).abs().max() > 0.1  # the flow did evolve
    for q in (T.energy, T.enstrophy):
        assert torch.allclose(q(w), q(w0), rtol=1e-7, atol=0)


def test_velocity_is_divergence_free_and_curls_back_to_vorticity():
    w = T.random_vorticity(3, 32, generator=torch.Generator().manual_seed(2))
    u = T.velocity(w)
    assert u.shape == (3, 2, 32, 32)
    assert T.divergence(u).abs().max() < 1e-12
    assert torch.allclose(T.vorticity(u), w, atol=1e-12)
    # Taylor-Green: u = (sin x cos y, -cos x sin y)
    x = _grid(16)
    u_tg = T.velocity(_taylor_green(16))
    assert torch.allclose(u_tg[0], torch.sin(x)[None, :] * torch.cos(x)[:, None], atol=1e-13)
    assert torch.allclose(u_tg[1], -torch.cos(x)[None, :] * torch.sin(x)[:, None], atol=1e-13)


def test_solver_converges_at_fourth_order_in_the_time_step():
    n = 32
    w0 = T.random_vorticity(1, n, k_peak=3.0, energy=0.5, generator=torch.Generator().manual_seed(3))
    ns = T.NavierStokes2D(n, 1e-2, forcing=T.KolmogorovForcing(1.0, 4), drag=0.1)
    ref = ns.run(w0, t=1.0, dt=1 / 320)
    errs = [float((ns.run(w0, t=1.0, dt=dt) - ref).abs().max()) for dt in (1 / 10, 1 / 20, 1 / 40)]
    slopes = [math.log2(a / b) for a, b in zip(errs, errs[1:])]
    assert all(3.5 < s < 4.6 for s in slopes), (errs, slopes)


def test_forced_flow_is_statistically_steady_and_seeded():
    kw = dict(nu=1e-2, snapshots=3, every=1.0, burn_in=5.0, dt=0.05)
    a = T.simulate_snapshots(2, 32, seed=0, **kw)
    assert torch.equal(a, T.simulate_snapshots(2, 32, seed=0, **kw))
    assert not torch.equal(a, T.simulate_snapshots(2, 32, seed=1, **kw))
    e = T.energy(a)
    assert torch.isfinite(e).all() and (e > 0.05).all()
    ring = T.simulate_snapshots(1, 32, forcing="ring", seed=0, **kw)
    decay = T.simulate_snapshots(1, 32, forcing="none", seed=0, **kw)
    assert T.energy(decay)[0, -1] < T.energy(decay)[0, 0] and torch.isfinite(ring).all()


# ---------------------------------------------------------------- storage and decoders
def test_spectral_decoder_is_exact_on_the_stored_band_and_bicubic_is_periodic():
    w = torch.randn(2, 1, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for f in (2, 4, 8):
        band = T.lowpass(w, f)
        assert torch.allclose(T.spectral_upsample(T.downsample(band, f), f), band, atol=1e-12)
        assert T.compression_ratio(f) == f * f
    low = T.downsample(w, 4)
    up = T.bicubic_upsample(low, 4)
    shifted = T.bicubic_upsample(torch.roll(low, 1, dims=-1), 4)
    assert torch.allclose(shifted, torch.roll(up, 4, dims=-1), atol=1e-12)  # no edge effects on a torus
    assert torch.allclose(T.downsample(torch.ones(1, 1, 8, 8), 4), torch.ones(1, 1, 2, 2))


def test_wavelet_truncation_with_haar_is_the_box_average():
    if not T.wavelets_available():
        pytest.skip("PyWavelets not installed (pip install 'flowforge[wavelets]')")
    w = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    box = T.downsample(w, 4).repeat_interleave(4, -1).repeat_interleave(4, -2)
    assert torch.allclose(T.wavelet_truncate(w, 4, wavelet="haar"), box, atol=1e-12)
    with pytest.raises(ValueError, match="power of 2"):
        T.wavelet_truncate(w, 3)


# ---------------------------------------------------------------- metrics
def test_spectrum_obeys_parseval_and_error_per_shell():
    w = T.random_vorticity(3, 32, generator=torch.Generator().manual_seed(4))
    e = T.energy_spectrum(w)
    assert torch.allclose(e.sum(-1), T.energy(w), rtol=1e-12)
    # a single shell: Taylor-Green has all its energy at |k| = sqrt(2) -> shell 1; E = 1/4 (u^2 + v^2 mean)
    e_tg = T.energy_spectrum(_taylor_green(16))
    assert e_tg[1] == pytest.approx(0.25) and e_tg.sum() == pytest.approx(0.25)
    assert T.spectrum_error(w, w).abs().max() == 0
    assert torch.allclose(T.spectrum_error(2 * w, w), torch.full((10,), 3.0, dtype=torch.float64))


def test_gradient_pdf_distance_of_a_scaled_field():
    w = T.random_vorticity(4, 32, generator=torch.Generator().manual_seed(5))
    g = T.velocity_gradients(w)
    a = 0.6
    # quantiles of a * g are a times those of g: W1 = |a - 1| E|g| / std(g) (up to the quantile grid)
    want = (1 - a) * float(g.abs().mean() / g.std())
    assert float(T.gradient_pdf_distance(a * w, w)) == pytest.approx(want, rel=0.02)
    assert float(T.gradient_pdf_distance(w, w)) == 0.0


def test_relative_l2_and_spearman():
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    assert torch.allclose(T.relative_l2(x * 1.25, x), torch.full((3,), 0.25, dtype=torch.float64))
    a = torch.randn(50, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    b = a + 0.5 * torch.randn(50, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    scipy_stats = pytest.importorskip("scipy.stats")
    assert float(T.spearman(a, b)) == pytest.approx(scipy_stats.spearmanr(a, b)[0], abs=1e-12)
    assert float(T.spearman(a, -(a**3))) == pytest.approx(-1.0)


# ---------------------------------------------------------------- learned decoders
def test_srgan_generator_term_does_not_train_the_critic():
    torch.manual_seed(0)
    x = torch.randn(4, 1, 32, 32)

    def grads(weight: float) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        torch.manual_seed(1)
        gan = T.SRGAN(4, channels=8, blocks=1, head=4, adv_weight=weight)
        gan.gen.out.weight.data.normal_(0, 0.1)  # a generator that is not the identity on the upsampling
        gan.loss(x).backward()
        return [p.grad.clone() for p in gan.critic.parameters()], [
            p.grad.clone() for p in gan.gen.parameters()
        ]

    c0, g0 = grads(0.0)
    c1, g1 = grads(1.0)
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(c0, c1))  # critic: only its own loss
    assert any(not torch.allclose(a, b) for a, b in zip(g0, g1))  # generator: feels the critic


def test_fresh_srgan_decodes_as_the_spectral_upsampling():
    gan = T.SRGAN(4, scale=2.0, channels=8, blocks=1, head=4)
    low = torch.randn(2, 1, 8, 8)
    assert torch.allclose(gan.decode(low), T.spectral_upsample(low, 4), atol=1e-5)
    assert gan.score(torch.randn(3, 1, 32, 32)).shape == (3,)


def test_flow_decoder_is_periodic_and_its_residual_starts_at_the_upsampling():
    sr = T.FlowSuperResolver(4, 32, patch=2, channels=8, mults=(1, 2))
    net = sr.fm.net
    for p in net.out[-1].parameters():  # a non-trivial network (the output conv starts at zero)
        p.data.normal_(0, 0.1)
    x, e = torch.randn(2, 4, 16, 16), torch.randn(2, 4, 16, 16)
    t = torch.rand(2)
    y = net(x, t, extra=e)
    y_shift = net(torch.roll(x, 2, dims=-1), t, extra=torch.roll(e, 2, dims=-1))
    assert torch.allclose(y_shift, torch.roll(y, 2, dims=-1), atol=1e-5)  # shifts by 2^(levels-1) commute
    sr3 = T.FlowSuperResolver(4, 32, frames=3, patch=2, channels=8, mults=(1,))
    assert sr3.decode(torch.randn(2, 2, 8, 8), steps=1).shape == (2, 1, 32, 32)
    assert float(sr3.loss(torch.randn(4, 3, 32, 32)).detach()) > 0


def test_bad_inputs_say_what_to_write():
    with pytest.raises(ValueError, match="even number"):
        T.NavierStokes2D(7, 0.1)
    with pytest.raises(ValueError, match="dealiased band"):
        T.KolmogorovForcing(1.0, 20)(32)
    with pytest.raises(ValueError, match="divisor"):
        T.downsample(torch.zeros(1, 1, 30, 30), 4)
    with pytest.raises(ValueError, match="x\\[:, None\\]"):
        T.downsample(torch.zeros(30, 32), 4)
    with pytest.raises(ValueError, match="forcing"):
        T.simulate_snapshots(1, 16, nu=0.1, snapshots=1, every=1.0, burn_in=0.0, forcing="random")
    with pytest.raises(ValueError, match="frames must be 1"):
        T.FlowSuperResolver(4, 32, frames=2)
    with pytest.raises(ValueError, match="content"):
        T.SRGAN(4, content="huber")


# ---------------------------------------------------------------- recipe
def test_turbulence_recipe_trains_and_evaluates(tmp_path):
    from flowforge.recipes import evaluate, get_recipe, sample, train_recipe

    over = {
        "n": 32,
        "flows": 2,
        "snapshots": 4,
        "burn_in": 1.0,
        "eval_flows": 1,
        "eval_snapshots": 4,
        "channels": 8,
        "patch": 2,
    }
    train_recipe("turbulence-sr", overrides=over, out=tmp_path / "fm", steps=3, progress=False)
    res = evaluate(tmp_path / "fm")
    assert set(get_recipe("turbulence-sr").metrics) <= set(res)
    assert res["compression"] == 16 and res["critic_spearman"] is None and res["rel_l2"] > 0
    assert sample(tmp_path / "fm", 2, steps=2).shape == (2, 1, 32, 32)
    train_recipe(
        "turbulence-sr",
        overrides={**over, "decoder": "gan", "factor": 8},
        out=tmp_path / "gan",
        steps=3,
        progress=False,
    )
    res = evaluate(tmp_path / "gan", metrics=["rel_l2", "critic_spearman", "compression"])
    assert res["compression"] == 64 and -1 <= res["critic_spearman"] <= 1
    with pytest.raises(ValueError, match="decoder=flow"):
        train_recipe(
            "turbulence-sr",
            overrides={**over, "decoder": "gan", "frames": 3},
            out=tmp_path / "x",
            steps=1,
            progress=False,
        )
