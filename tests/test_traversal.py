"""Latent traversals as potential flows (apps/traversal): PDE terms against analytic truth, the blob decoder,
the purity metrics and the ``blobs-traversal`` recipe."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from flowforge.apps.traversal import (
    BlobDecoder,
    FactorOracle,
    FixedDirections,
    LinearTraversal,
    PairClassifier,
    PotentialFlowTraversal,
    evaluate_traversals,
    factor_gap,
    pca_directions,
    render_blobs,
    traversal_purity,
)

D = torch.float64


class Quadratic(nn.Module):
    """u(z, tau) = (1 + tau) * z^T Q z / 2: grad = (1 + tau) Q z, Laplacian = (1 + tau) tr Q."""

    def __init__(self, q: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("q", q)

    def forward(self, z, tau):
        return 0.5 * (1 + tau) * ((z @ self.q) * z).sum(1)


class Wave(nn.Module):
    """u(z, tau) = T(c |k| tau) sin(k . z), T = cos or sin: an exact solution of u_tt = c^2 Laplacian u."""

    def __init__(self, k: torch.Tensor, c: float, time_fn=torch.cos) -> None:
        super().__init__()
        self.register_buffer("k", k)
        self.c, self.time_fn = c, time_fn

    def forward(self, z, tau):
        return self.time_fn(self.c * self.k.norm() * tau) * torch.sin(z @ self.k)


def _model(potentials, c_init=1.0, max_step=None, steps=4):
    dec = BlobDecoder(size=8, bend=0.5, seed=0)
    pf = PotentialFlowTraversal(
        dec,
        4,
        len(potentials),
        steps,
        potentials=potentials,
        c_init=c_init,
        max_step=max_step,
        classifier_width=8,
    )
    pf = pf.double()
    with torch.no_grad():
        pf.log_c.fill_(math.log(c_init))  # the float32 init rounds c
    return pf


def _sym(seed, diagonal=False):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(4, 4, generator=g, dtype=D)
    return torch.diag(torch.diagonal(a)) if diagonal else (a + a.T) / 2


# ---------------------------------------------------------------- Laplacian and PDE terms
def test_hutchinson_laplacian_matches_exact():
    q = _sym(0)
    kvec = torch.tensor([0.7, -1.1, 0.4, 0.9], dtype=D)
    pf = _model([Quadratic(q), Wave(kvec, 1.3)])
    g = torch.Generator().manual_seed(1)
    z = torch.randn(6, 4, generator=g, dtype=D)
    tau = torch.rand(6, generator=g, dtype=D)
    # exact Laplacian against the analytic one
    assert torch.allclose(pf.laplacian(0, z, tau, method="exact"), (1 + tau) * torch.trace(q), atol=1e-12)
    wave_lap = -kvec.square().sum() * pf.potential(1, z, tau)
    assert torch.allclose(pf.laplacian(1, z, tau, method="exact"), wave_lap, atol=1e-12)
    # Hutchinson: unbiased, converges to the exact trace with many Rademacher probes
    probes = torch.randint(0, 2, (4000, 6, 4), generator=g).to(D) * 2 - 1
    for k, exact in ((0, (1 + tau) * torch.trace(q)), (1, wave_lap)):
        est = pf.laplacian(k, z, tau, method="hutchinson", probes=probes)
        scale = exact.abs().max() + 1
        assert (est - exact).abs().max() < 0.05 * scale
        one = pf.laplacian(k, z, tau, method="hutchinson", probes=probes[:1])
        assert (one - exact).abs().max() > 1e-3  # one probe is not exact for a full Hessian
    # a diagonal Hessian: one Rademacher probe is already exact
    pf_diag = _model([Quadratic(_sym(2, diagonal=True)), Quadratic(_sym(3))])
    est = pf_diag.laplacian(0, z, tau, method="hutchinson", probes=probes[:1])
    assert torch.allclose(est, (1 + tau) * torch.trace(_sym(2, diagonal=True)), atol=1e-12)


def test_exact_laplacian_of_an_mlp_matches_the_hessian_trace():
    torch.manual_seed(0)
    pf = PotentialFlowTraversal(BlobDecoder(size=8), 4, 2, width=16).double()
    z = torch.randn(3, 4, dtype=D)
    tau = torch.rand(3, dtype=D)
    lap = pf.laplacian(1, z, tau, method="exact")
    for b in range(3):
        h = torch.func.hessian(lambda v, tb=tau[b : b + 1]: pf.potential(1, v[None], tb)[0])(z[b])
        assert torch.allclose(lap[b], torch.trace(h), atol=1e-10)


def test_wave_residual_vanishes_on_an_analytic_solution():
    kvec = torch.tensor([0.5, 1.2, -0.3, 0.8], dtype=D)
    c = 1.7
    pf = _model([Wave(kvec, c), Wave(kvec, c, torch.sin)], c_init=c)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 4, generator=g, dtype=D)
    tau = torch.rand(16, generator=g, dtype=D)
    for k in (0, 1):
        res = pf.wave_residual(k, z, tau, method="exact")
        assert res.abs().max() < 1e-10
    # the wrong wave speed leaves a residual (c_k^2 - c^2) * Laplacian
    wrong = _model([Wave(kvec, c), Wave(kvec, c)], c_init=1.0)
    res = wrong.wave_residual(0, z, tau, method="exact")
    lap = -kvec.square().sum() * wrong.potential(0, z, tau)
    assert torch.allclose(res, (c**2 - 1.0) * lap, atol=1e-10)
    assert res.abs().max() > 0.1


def test_initial_condition_term():
    kvec = torch.tensor([0.5, 1.2, -0.3, 0.8], dtype=D)
    pf = _model([Wave(kvec, 1.0), Wave(kvec, 1.0, torch.sin)])
    z = torch.randn(32, 4, generator=torch.Generator().manual_seed(0), dtype=D)
    # cos in time: grad u(z, 0) = k cos(k . z); sin in time: zero gradient at tau = 0
    want = (kvec.square().sum() * torch.cos(z @ kvec).square()).mean()
    assert torch.allclose(pf.initial_condition(0, z), want, atol=1e-12)
    assert pf.initial_condition(1, z).abs() < 1e-14


def test_traversal_step_is_the_gradient_step():
    q = _sym(0)
    pf = _model([Quadratic(q), Quadratic(-q)], steps=3)
    z = torch.randn(5, 4, generator=torch.Generator().manual_seed(0), dtype=D)
    for t in range(3):
        tau = (t + 1) / 3
        assert torch.allclose(pf.step(0, z, t), (1 + tau) * z @ q, atol=1e-12)
    path = pf.traverse(1, z)
    want = [z]
    for t in range(3):
        want.append(want[-1] + (1 + (t + 1) / 3) * want[-1] @ (-q))
    assert torch.allclose(path, torch.stack(want, 1), atol=1e-12)
    # the step cap scales long steps down to max_step and leaves short ones alone
    capped = _model([Quadratic(100 * q), Quadratic(1e-4 * q)], max_step=0.1)
    assert torch.allclose(capped.step(0, z, 0).norm(dim=1), torch.full((5,), 0.1, dtype=D), atol=1e-12)
    assert torch.allclose(capped.step(1, z, 0), 1.25e-4 * z @ q, atol=1e-15)


def test_loss_trains_every_part():
    torch.manual_seed(0)
    dec = BlobDecoder(size=8, seed=0)
    pf = PotentialFlowTraversal(dec, 4, 3, 4, width=16, max_step=0.3, classifier_width=16)
    z = dec.sample_codes(12, generator=torch.Generator().manual_seed(0))
    pf.loss(z).backward()
    assert {"ce", "jvp", "accuracy", "pde", "ic"} <= set(pf.last_terms)
    for name, p in pf.named_parameters():
        if name.endswith("out.bias") and name.startswith("potentials"):
            continue  # a constant shift of u moves nothing
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(b.grad is None for b in dec.buffers())


def test_jvp_term_is_the_decoder_jacobian_times_the_step():
    torch.manual_seed(0)
    dec = BlobDecoder(size=8, seed=0).double()
    lin = LinearTraversal(dec, 4, 2, 1, max_step=0.2, classifier_width=8, cls_weight=0.0).double()
    z = dec.sample_codes(4, generator=torch.Generator().manual_seed(0)).double()
    loss = lin.loss(z)  # steps=1: t = 0, chunks of 2
    want = 0.0
    for k, chunk in enumerate(z.chunk(2)):
        v = lin.step(k, chunk, 0)
        jac = torch.func.vmap(torch.func.jacrev(lambda x: dec(x[None])[0]))(chunk)  # (B, 1, 8, 8, 4)
        jv = (jac * v[:, None, None, None, :]).sum(-1)
        want -= jv.flatten(1).square().sum(1).mean() / 2
    assert torch.allclose(loss, want, atol=1e-10)


# ---------------------------------------------------------------- decoder and renderer
def test_renderer_factors_are_recovered():
    f = torch.tensor([[5.0, 9.5, 1.2, 0.8], [9.3, 6.1, 1.6, 0.5]], dtype=D)
    img = render_blobs(f, 16)[:, 0]
    grid = torch.arange(16, dtype=D)
    mass = img.sum((1, 2))
    x = (img.sum(1) * grid).sum(1) / mass
    y = (img.sum(2) * grid).sum(1) / mass
    var = (img * ((grid[None, None] - x[:, None, None]) ** 2)).sum((1, 2)) / mass
    assert torch.allclose(x, f[:, 0], atol=1e-3) and torch.allclose(y, f[:, 1], atol=1e-3)
    assert torch.allclose(var.sqrt(), f[:, 2], atol=1e-3)
    assert torch.allclose(mass / (2 * math.pi * var), f[:, 3], atol=1e-3)  # mass = b 2 pi sigma^2


def test_decoder_inverse_and_factor_directions():
    dec = BlobDecoder(size=16, bend=1.5, seed=3).double()
    g = torch.Generator().manual_seed(0)
    f = torch.rand(7, 4, generator=g, dtype=D) * 0.8 + 0.1
    z = dec.unmix(torch.logit(f))
    assert torch.allclose(dec.factors(z), f, atol=1e-12)
    dirs = dec.factor_directions(z)
    jac = torch.func.vmap(torch.func.jacrev(lambda v: dec.mix(v[None])[0]))(z)
    for i in range(4):
        dw = torch.einsum("bwz,bz->bw", jac, dirs[:, i])
        assert torch.allclose(dw, torch.eye(4, dtype=D)[i].expand(7, 4), atol=1e-10)


# ---------------------------------------------------------------- purity
def test_purity_one_for_a_single_factor_and_below_one_for_a_mix():
    dec = BlobDecoder(size=16, bend=0.0, seed=1).double()  # factor i moves along rotation row i
    codes = dec.sample_codes(64, generator=torch.Generator().manual_seed(0)).double()
    rows = dec.rotation.double()
    pure = FixedDirections(rows, steps=5, max_step=0.3)
    r = evaluate_traversals(pure, dec.factors, codes)
    assert r["purity"] == pytest.approx(1.0, abs=1e-12)
    assert r["factor_gap"] == pytest.approx(1.0, abs=1e-12) and r["coverage"] == 1.0
    mixed = FixedDirections(torch.stack([rows[0] + rows[1], rows[2] + 0.3 * rows[3]]), steps=5, max_step=0.3)
    r = evaluate_traversals(mixed, dec.factors, codes)
    assert r["purity"] < 0.95 and r["factor_gap"] < 0.8
    # the oracle stays pure on a bent decoder; a global direction does not
    bent = BlobDecoder(size=16, bend=1.5, seed=1).double()
    oracle = evaluate_traversals(FactorOracle(bent, steps=5, max_step=0.01), bent.factors, codes)
    assert oracle["purity"] > 0.998
    straight = evaluate_traversals(FixedDirections(rows, steps=5, max_step=0.01), bent.factors, codes)
    assert straight["purity"] < oracle["purity"] - 0.05
    d = torch.zeros(3, 2, 4, dtype=D)
    d[0, :, 2] = 1.0
    d[1, :, 0], d[1, :, 3] = 1.0, 1.0
    d[2, 0, 1], d[2, 1, 1] = 3.0, -3.0  # back and forth along one factor: still pure
    assert torch.allclose(traversal_purity(d), torch.tensor([1.0, 0.5, 1.0], dtype=D))
    assert factor_gap(torch.full((4, 4), 0.25)) == 0.0


def test_pca_recovers_straight_factor_axes():
    dec = BlobDecoder(size=16, bend=0.0, seed=1)
    codes = dec.sample_codes(20000, generator=torch.Generator().manual_seed(0))
    axes = pca_directions(codes, 4)
    # spreads decrease with the factor index, so PCA axis i is rotation row i (up to sign)
    cos = (axes @ dec.rotation.T).abs()
    assert torch.allclose(torch.diagonal(cos), torch.ones(4), atol=0.02)


# ---------------------------------------------------------------- errors
def test_bad_inputs_raise_clear_errors():
    dec = BlobDecoder(size=8)
    with pytest.raises(ValueError, match="laplacian='hutchinson'"):
        PotentialFlowTraversal(dec, 4, 2, laplacian="trace")
    with pytest.raises(ValueError, match="one potential per traversal"):
        PotentialFlowTraversal(dec, 4, 3, potentials=[Quadratic(torch.eye(4))])
    with pytest.raises(ValueError, match="max_step"):
        LinearTraversal(dec, 4, 2, max_step=None)
    pf = PotentialFlowTraversal(dec, 4, 2, width=8)
    with pytest.raises(ValueError, match=r"shape \(B, 4\)"):
        pf.traverse(0, torch.zeros(3, 5))
    with pytest.raises(ValueError, match="k must be in 0..1"):
        pf.traverse(2, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="smaller than K"):
        pf.loss(torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        render_blobs(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="bend"):
        BlobDecoder(bend=-1.0)
    with pytest.raises(ValueError, match="num_traversals >= 2"):
        PairClassifier((1, 8, 8), 1)


# ---------------------------------------------------------------- recipe
def test_blobs_traversal_recipe_trains_and_evaluates(tmp_path):
    from flowforge.recipes import evaluate, get_recipe, sample, train_recipe

    over = {"eval_samples": 64, "width": 16, "classifier_width": 16, "batch_size": 16, "traverse_steps": 3}
    for method in ("potential", "linear"):
        out = tmp_path / method
        train_recipe(
            "blobs-traversal", overrides={**over, "method": method}, out=out, steps=3, progress=False
        )
        res = evaluate(out)
        assert set(get_recipe("blobs-traversal").default_metrics) <= set(res)
        assert 0.25 <= res["purity"] <= 1.0 and res["purity_oracle"] > 0.95
        assert math.isclose(res["step_norm"], 0.3, rel_tol=1e-4) or method == "potential"
        images = sample(out, 2)
        assert images.shape == (2, 4, 4, 1, 16, 16)
        assert get_recipe("blobs-traversal").picture(images, {}).shape == (32, 1, 16, 16)
    with pytest.raises(ValueError, match="method"):
        train_recipe(
            "blobs-traversal",
            overrides={**over, "method": "pde"},
            out=tmp_path / "x",
            steps=1,
            progress=False,
        )
