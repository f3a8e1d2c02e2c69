"""3-D latents: the Gaussian renderer, the frozen reconstructor, and the latent-space practices
(per-channel standardisation, spatial loss weights, decoder-space loss) of latent flows."""

import math

import pytest
import torch

from flowforge import FlowMatching
from flowforge.apps.scenes3d import (
    GaussianGridReconstructor,
    column_density,
    render_views,
    sample_scenes,
    view_features,
)
from flowforge.latent import LatentModel, LatentStandardizer, latent_flow_matching_loss, normalise_weights
from flowforge.nn import MLP

D = torch.float64


def scene(*rows) -> torch.Tensor:
    return torch.tensor([list(rows)], dtype=D)


# ---------------------------------------------------------------- renderer
def test_column_density_total_mass_is_the_analytic_integral():
    # the pixel-averaged column densities integrate to w * 2 pi sigma^2 times the normal mass inside [-1, 1]^2
    mu, sg, w = (0.1, -0.2, 0.7), 0.3, 1.7
    s = scene([*mu, sg, 1.0, 0.5, 0.25, w])
    img = column_density(s, size=16)
    total = img.sum((-1, -2)) * (2 / 16) ** 2  # (1, 2, 3)

    def inside(m: float) -> float:
        return 0.5 * (math.erf((1 - m) / (sg * math.sqrt(2))) - math.erf((-1 - m) / (sg * math.sqrt(2))))

    colour = torch.tensor([1.0, 0.5, 0.25], dtype=D)
    full = w * 2 * math.pi * sg**2
    want = torch.stack(
        [full * inside(mu[0]) * inside(mu[1]) * colour, full * inside(mu[2]) * inside(mu[1]) * colour]
    )
    torch.testing.assert_close(total[0], want, rtol=1e-12, atol=0)
    assert float(want[1, 0]) < 0.99 * full  # view 1 loses mass at the border: the check sees the truncation


def test_pixel_value_matches_numerical_3d_integral():
    # one pixel of view 1 (looks down x: columns z, rows y) against a midpoint rule over the 3-D density
    mu, sg, w, size = torch.tensor([0.2, -0.1, 0.05], dtype=D), 0.2, 1.3, 8
    s = scene([*mu.tolist(), sg, 1.0, 1.0, 1.0, w])
    row, col = 3, 4  # y in [-0.25, 0], z in [0, 0.25]
    got = column_density(s, size)[0, 1, 0, row, col]
    n = 200
    y = -1 + 2 * row / size + (torch.arange(n, dtype=D) + 0.5) * (2 / size) / n
    z = -1 + 2 * col / size + (torch.arange(n, dtype=D) + 0.5) * (2 / size) / n
    x = torch.linspace(-3, 3, 4001, dtype=D)
    X, Y, Z = torch.meshgrid(x, y, z, indexing="ij")
    r2 = (X - mu[0]) ** 2 + (Y - mu[1]) ** 2 + (Z - mu[2]) ** 2
    dens = w / math.sqrt(2 * math.pi * sg**2) * torch.exp(-r2 / (2 * sg**2))
    want = torch.trapezoid(dens, x, dim=0).mean()  # mean over the pixel of the line integral along x
    assert float(got) == pytest.approx(float(want), rel=1e-5)


def test_views_orientation_and_gradients():
    s = scene([0.6, 0.0, -0.6, 0.1, 1.0, 1.0, 1.0, 2.0])
    img = column_density(s, size=8)[0, :, 0]
    assert int(img[0].sum(0).argmax()) == 6  # view 0: column is x = 0.6
    assert int(img[1].sum(0).argmax()) == 1  # view 1: column is z = -0.6
    s.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: render_views(p, 4), (s,))


def test_renderer_and_scene_bad_inputs():
    with pytest.raises(ValueError, match=r"\(B, K, 8\)"):
        render_views(torch.zeros(2, 8))
    with pytest.raises(ValueError, match="sigma > 0"):
        render_views(torch.zeros(1, 1, 8))
    with pytest.raises(ValueError, match="n >= 1"):
        sample_scenes(0)
    with pytest.raises(ValueError, match=r"\(B, 2, 3, H, H\)"):
        view_features(torch.zeros(2, 3, 16, 16))


def test_reconstructor_shapes_and_bad_views():
    torch.manual_seed(0)
    rec = GaussianGridReconstructor(image_size=8, width=8)
    v = render_views(sample_scenes(3, generator=torch.Generator().manual_seed(0)), 8)
    z, lv = rec.encode(v)
    assert z.shape == (3, 8, 4, 4, 4) and not lv.any()
    assert rec.to_scene(z).shape == (3, 64, 8) and rec.decode(z).shape == v.shape
    occ = rec.occupancy(z)
    assert occ.shape == (3, 4, 4, 4) and bool(((occ > 0) & (occ < 1)).all())
    with pytest.raises(ValueError, match="expects views"):
        rec.encode(torch.zeros(3, 6, 8, 8))
    with pytest.raises(ValueError, match="multiple of grid"):
        GaussianGridReconstructor(image_size=10)


# ---------------------------------------------------------------- standardisation
@pytest.mark.parametrize("per_channel,robust", [(True, False), (False, False), (True, True)])
def test_standardizer_exactly_invertible(per_channel, robust):
    g = torch.Generator().manual_seed(0)
    u = (
        torch.randn(64, 3, 2, 2, generator=g, dtype=D)
        * torch.tensor([0.1, 5.0, 40.0], dtype=D).view(1, 3, 1, 1)
        + 7
    )
    st = LatentStandardizer(3, per_channel=per_channel, robust=robust).to(D).fit(u)
    torch.testing.assert_close(st.inverse(st(u)), u, rtol=0, atol=1e-12)
    z = st(u).transpose(0, 1).flatten(1)
    if per_channel and not robust:
        torch.testing.assert_close(z.mean(1), torch.zeros(3, dtype=D), rtol=0, atol=1e-12)
        torch.testing.assert_close(z.std(1), torch.ones(3, dtype=D), rtol=0, atol=1e-12)
    if not per_channel:
        assert torch.equal(st.scale, st.scale[:1].expand(3)) and float(z.flatten().std()) == pytest.approx(
            1.0
        )
    if robust:
        torch.testing.assert_close(z.median(1).values, torch.zeros(3, dtype=D), rtol=0, atol=1e-12)


def test_standardizer_bad_inputs():
    st = LatentStandardizer(3)
    with pytest.raises(ValueError, match=r"\(N, 3, \*grid\)"):
        st.fit(torch.zeros(5, 4))
    with pytest.raises(ValueError, match="constant"):
        st.fit(torch.ones(5, 3))
    with pytest.raises(ValueError, match="at least 2"):
        st.fit(torch.randn(1, 3))


# ---------------------------------------------------------------- spatial weights and decoder-space loss
def fm64(shape=(2, 3, 3)) -> FlowMatching:
    torch.manual_seed(0)
    return FlowMatching(MLP(dim=shape, width=16, depth=1)).to(D)


def test_uniform_spatial_weights_reproduce_the_plain_loss():
    fm, z = fm64(), torch.randn(8, 2, 3, 3, dtype=D)
    torch.manual_seed(3)
    plain = fm.loss(z)
    for w in (None, torch.ones(8, 3, 3, dtype=D), 5 * torch.ones(8, 3, 3, dtype=D)):
        torch.manual_seed(3)
        assert torch.equal(latent_flow_matching_loss(fm, z, weight=w), plain)


def test_spatial_weights_weight_each_position():
    fm, z = fm64(), torch.randn(8, 2, 3, 3, dtype=D)
    w = torch.rand(8, 3, 3, dtype=D) + 0.05
    torch.manual_seed(3)
    got = latent_flow_matching_loss(fm, z, weight=w)
    torch.manual_seed(3)
    z0 = torch.randn_like(z)
    t = fm.time(8, dtype=D)
    xt = t.view(-1, 1, 1, 1) * z + (1 - t.view(-1, 1, 1, 1)) * z0
    err = (fm.net(xt, t) - (z - z0)).square()  # (B, C, 3, 3)
    wn = w / w.mean((1, 2), keepdim=True)
    torch.testing.assert_close(got, (err * wn[:, None]).mean(), rtol=1e-12, atol=0)
    assert not torch.allclose(got, err.mean())
    with pytest.raises(ValueError, match="do not match the latent grid"):
        latent_flow_matching_loss(fm, z, weight=torch.ones(8, 2, 2, dtype=D))
    with pytest.raises(ValueError, match=">= 0"):
        normalise_weights(-torch.ones(2, 3), 2)
    with pytest.raises(ValueError, match="all zero"):
        normalise_weights(torch.zeros(2, 3), 2)


def test_decoder_space_loss_is_zero_at_the_truth():
    rec = GaussianGridReconstructor(image_size=8, width=4).to(D).requires_grad_(False)
    z1 = torch.randn(4, *rec.latent_shape, dtype=D)
    z1[:, 0] -= 4.0  # mostly transparent cells and small Gaussians: views that are not saturated
    z1[:, 4] -= 3.0

    class Oracle(torch.nn.Module):  # the exact velocity of the linear path towards z1: (z1 - x_t) / (1 - t)
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros((), dtype=D))

        def forward(self, x, t):
            return (z1 - x) / (1 - t).view(-1, 1, 1, 1, 1) + 0 * self.p

    fm = FlowMatching(Oracle())
    torch.manual_seed(0)
    loss = latent_flow_matching_loss(fm, z1, decode=rec.decode, decoder_weight=10.0)
    assert float(loss.detach()) < 1e-20
    fm_bad = fm64(rec.latent_shape)
    torch.manual_seed(0)
    plain = latent_flow_matching_loss(fm_bad, z1)
    torch.manual_seed(0)
    with_dec = latent_flow_matching_loss(fm_bad, z1, decode=rec.decode, decoder_weight=1.0)
    assert float(with_dec.detach()) > float(plain.detach()) + 1e-3
    with pytest.raises(ValueError, match="needs decode="):
        latent_flow_matching_loss(fm_bad, z1, decoder_weight=1.0)
    with pytest.raises(ValueError, match=">= 0"):
        latent_flow_matching_loss(fm_bad, z1, decode=rec.decode, decoder_weight=-1.0)
    with pytest.raises(TypeError, match="FlowMatching inner model"):
        latent_flow_matching_loss(torch.nn.Linear(2, 2), z1)


def test_latent_model_options_through_the_frozen_reconstructor():
    torch.manual_seed(0)
    rec = GaussianGridReconstructor(image_size=8, width=4)
    v = render_views(sample_scenes(6, generator=torch.Generator().manual_seed(1)), 8)
    u = rec.encode(v)[0].detach()
    st = LatentStandardizer(8).fit(u)
    fm = FlowMatching(MLP(dim=rec.latent_shape, width=16, depth=1))
    plain = LatentModel(fm, rec, shift=st.shift, scale=st.scale)
    unif = LatentModel(
        fm, rec, shift=st.shift, scale=st.scale, spatial_weight=lambda u: torch.ones(len(u), 4, 4, 4)
    )
    torch.manual_seed(5)
    a = plain.loss(v)
    torch.manual_seed(5)
    assert torch.equal(unif.loss(v), a)
    full = LatentModel(
        fm,
        rec,
        shift=st.shift,
        scale=st.scale,
        spatial_weight=lambda u: 0.1 + rec.occupancy(u),
        decoder_loss=1.0,
    )
    torch.manual_seed(5)
    b = full.loss(v)
    b.backward()
    assert b.ndim == 0 and float(b.detach()) != float(a.detach())
    assert all(p.grad is None for p in rec.parameters())
    with pytest.raises(ValueError, match="decoder_loss must be >= 0"):
        LatentModel(fm, rec, shift=0.0, scale=1.0, decoder_loss=-1.0)


def test_gaussians3d_recipe_trains_and_evaluates(tmp_path):
    from flowforge.recipes import evaluate, sample, train_recipe

    over = {
        "n_train": 64,
        "rec_steps": 2,
        "rec_width": 4,
        "width": 16,
        "depth": 1,
        "eval_n": 32,
        "threads": 1,
        "image_size": 8,
    }
    train_recipe("gaussians3d-latent", overrides=over, out=tmp_path / "g", steps=3, progress=False)
    res = evaluate(tmp_path / "g", steps=2)
    assert {"fd", "fd_control", "recon_fd"} <= set(res) and res["fd"] > res["fd_control"] >= 0
    assert sample(tmp_path / "g", 3, steps=2).shape == (3, 2, 3, 8, 8)
    with pytest.raises(ValueError, match="standardize"):
        train_recipe(
            "gaussians3d-latent", overrides={**over, "standardize": "bad"}, out=tmp_path / "h", steps=1
        )
