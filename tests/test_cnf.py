"""Continuous normalizing flows (``normalizing/cnf.py``): closed forms, the bijection battery, Hutchinson,
RNODE regularisers, a short maximum-likelihood fit and the errors.

The shared battery of ``tests/test_bijections.py`` asserts to 1e-8; a CNF is exact only up to its
solver's error, so the same checks run here in float64 with tolerances for a fixed-step RK4 solve.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian

from flowforge.core.solvers import Dopri5
from flowforge.nn import MLP
from flowforge.normalizing import CNF, FFJORD, Flow, StandardNormal
from flowforge.train.checkpoint import load_safetensors, save_safetensors

torch.set_num_threads(1)
F64 = torch.float64


class LinearField(nn.Module):
    """``f(z, t) = A z`` (time-independent): the flow map over time ``s`` is ``exp(s A)``."""

    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.a = nn.Parameter(a.clone())

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return z @ self.a.T


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _points(b: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, d, generator=_gen(seed), dtype=F64)


def _mlp_cnf(dim: int, seed: int = 0, perturb: bool = True, **kw) -> CNF:
    """A small random MLP field in float64, parameters moved away from their initialisation."""
    torch.manual_seed(seed)
    cnf = CNF(MLP(dim=dim, width=16, depth=2), **{"steps": 16, **kw}).double()
    if perturb:
        g = _gen(1234 + seed)
        with torch.no_grad():
            for p in cnf.parameters():
                p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return cnf


A = torch.tensor([[0.3, -0.7], [0.5, -0.2]], dtype=F64)


# ------------------------------------------------------------------------------------ (a) closed form


@pytest.mark.parametrize("t1", [1.0, 0.5])
def test_linear_field_matches_matrix_exponential(t1):
    cnf = CNF(LinearField(A), t1=t1, solver="rk4", steps=40)
    x = _points(8, 2)
    z, ladj = cnf(x)
    # forward runs from t1 (data) back to 0 (noise): z = exp(-t1 A) x, log det = -t1 tr(A)
    torch.testing.assert_close(z, x @ torch.linalg.matrix_exp(-t1 * A).T, atol=1e-6, rtol=0)
    torch.testing.assert_close(ladj, torch.full((8,), -t1 * A.trace().item(), dtype=F64), atol=1e-6, rtol=0)
    x2, ladj_inv = cnf.inverse(z)
    torch.testing.assert_close(x2, x, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        ladj_inv, torch.full((8,), t1 * A.trace().item(), dtype=F64), atol=1e-6, rtol=0
    )
    # inverse from an arbitrary noise point: x = exp(t1 A) z
    z0 = _points(8, 2, seed=1)
    torch.testing.assert_close(cnf.inverse(z0)[0], z0 @ torch.linalg.matrix_exp(t1 * A).T, atol=1e-6, rtol=0)


def test_linear_field_log_prob_is_the_gaussian_pushforward():
    # x = exp(A) z with z ~ N(0, I): x ~ N(0, M M^T), M = exp(A)
    flow = Flow([CNF(LinearField(A), steps=40)], StandardNormal(2))
    m = torch.linalg.matrix_exp(A)
    truth = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=F64), covariance_matrix=m @ m.T)
    x = _points(16, 2, seed=3)
    torch.testing.assert_close(flow.log_prob(x), truth.log_prob(x), atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------ (b) battery


def test_round_trip():
    cnf = _mlp_cnf(3)
    x = 2.0 * _points(64, 3)
    z, ladj = cnf(x)
    assert z.shape == x.shape and ladj.shape == (64,)
    assert not torch.allclose(z, x, atol=1e-2), "a perturbed field should not be the identity"
    x2, ladj_inv = cnf.inverse(z)
    torch.testing.assert_close(x2, x, atol=1e-6, rtol=0)
    torch.testing.assert_close(ladj + ladj_inv, torch.zeros_like(ladj), atol=1e-6, rtol=0)
    z2 = _points(64, 3, seed=1)
    torch.testing.assert_close(cnf(cnf.inverse(z2)[0])[0], z2, atol=1e-6, rtol=0)


@pytest.mark.parametrize("solver", ["rk4", "heun"])
def test_log_det_matches_autograd_jacobian_of_the_whole_map(solver):
    cnf = _mlp_cnf(3, solver=solver, steps=16 if solver == "rk4" else 64)
    tol = 1e-6 if solver == "rk4" else 1e-4
    x = _points(4, 3, seed=2)
    z, ladj = cnf(x)
    _, ladj_inv = cnf.inverse(z)
    for i in range(x.shape[0]):
        jac = jacobian(lambda xi: cnf(xi[None])[0][0], x[i])
        sign, logdet = torch.linalg.slogdet(jac)
        assert sign != 0
        torch.testing.assert_close(ladj[i], logdet, atol=tol, rtol=0)
        jac_inv = jacobian(lambda zi: cnf.inverse(zi[None])[0][0], z[i])
        torch.testing.assert_close(ladj_inv[i], torch.linalg.slogdet(jac_inv)[1], atol=tol, rtol=0)


def test_density_integrates_to_one_in_2d():
    flow = Flow([_mlp_cnf(2, steps=6)], StandardNormal(2)).double()
    n, lim = 160, 8.0
    h = 2 * lim / n
    u = -lim + h * (torch.arange(n, dtype=F64) + 0.5)
    grid = torch.cartesian_prod(u, u)
    with torch.no_grad():
        lp = flow.log_prob(grid)
    assert not lp.requires_grad
    mass = lp.exp().sum().item() * h * h
    assert abs(mass - 1) < 5e-3, f"CNF density integrates to {mass}"


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_gradients_reach_every_parameter(divergence):
    cnf = _mlp_cnf(2, steps=4, divergence=divergence, generator=_gen(0), kinetic=0.1, jacobian_norm=0.1)
    flow = Flow([cnf], StandardNormal(2)).double()
    x = _points(32, 2, seed=3).requires_grad_(True)
    (flow.log_prob(x).sum() + cnf.regulariser_loss()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, p in flow.named_parameters():
        assert p.grad is not None, f"no gradient for {name}"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"bad gradient for {name}"


def test_checkpointing_gives_the_same_gradients():
    grads = []
    for ckpt in (False, True):
        cnf = _mlp_cnf(2, steps=3, checkpoint=ckpt, kinetic=0.1, jacobian_norm=0.1, generator=_gen(5))
        z, ladj = cnf(_points(8, 2))
        (ladj.sum() + (z**2).sum() + cnf.regulariser_loss()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in cnf.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-12, rtol=1e-10)


def test_save_load_round_trip(tmp_path):
    cnf = _mlp_cnf(3, steps=4)
    path = tmp_path / "cnf.safetensors"
    save_safetensors(path, {k: v.contiguous() for k, v in cnf.state_dict().items()})
    fresh = _mlp_cnf(3, seed=1, perturb=False, steps=4)
    fresh.load_state_dict(load_safetensors(path))
    x = _points(16, 3)
    for a, b in zip(cnf(x), fresh(x)):
        assert torch.equal(a, b)
    for a, b in zip(cnf.inverse(x), fresh.inverse(x)):
        assert torch.equal(a, b)


def test_ffjord_is_a_flow_with_one_cnf():
    flow = FFJORD(2, width=8, depth=1, steps=2)
    assert isinstance(flow, Flow) and isinstance(flow.cnf, CNF)
    assert (flow.dim, flow.width, flow.depth) == (2, 8, 1)
    plain = Flow([flow.cnf], StandardNormal(2))
    assert list(flow.state_dict()) == list(plain.state_dict())
    x = torch.randn(5, 2)
    torch.testing.assert_close(flow.log_prob(x), plain.log_prob(x))
    assert flow.sample(4, generator=_gen(0)).shape == (4, 2)


# ------------------------------------------------------------------------------------ (c) Hutchinson


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(probe):
    exact = _mlp_cnf(2, steps=4)
    hutch = _mlp_cnf(2, steps=4, divergence="hutchinson", probe=probe, generator=_gen(7))
    x = _points(1, 2, seed=4).expand(4000, 2)  # one point, 4000 independent probes
    with torch.no_grad():
        z_e, l_e = exact(x[:1])
        z_h, l_h = hutch(x)
    torch.testing.assert_close(z_h, z_e.expand(4000, 2))  # the trajectory does not see the probe
    assert l_h.std() > 1e-3, "a single-probe estimate should vary"
    err = (l_h.mean() - l_e[0]).abs().item()
    assert err < 4 * l_h.std().item() / math.sqrt(4000), (err, l_h.std().item())


def test_hutchinson_probes_follow_the_generator():
    a = _mlp_cnf(2, steps=2, divergence="hutchinson", generator=_gen(3))
    b = _mlp_cnf(2, steps=2, divergence="hutchinson", generator=_gen(3))
    x = _points(64, 2)
    with torch.no_grad():
        la, la2, lb = a(x)[1], a(x)[1], b(x)[1]
    assert torch.equal(la, lb) and not torch.equal(la, la2)


# ------------------------------------------------------------------------------------ (d) RNODE


def test_regularisers_vanish_for_a_zero_field():
    cnf = CNF(LinearField(torch.zeros(2, 2, dtype=F64)), steps=4, kinetic=1.0, jacobian_norm=1.0)
    x = _points(8, 2)
    z, ladj, kin, jac = cnf.forward_with_regularisers(x)
    assert torch.equal(z, x) and torch.equal(ladj, torch.zeros(8, dtype=F64))
    assert torch.equal(kin, torch.zeros(8, dtype=F64)) and torch.equal(jac, torch.zeros(8, dtype=F64))
    cnf(x)
    assert cnf.regulariser_loss().item() == 0.0


@pytest.mark.parametrize("grad", [True, False])
def test_regularisers_of_a_scaled_identity(grad):
    a, t1 = 0.7, 0.8
    cnf = CNF(LinearField(a * torch.eye(3, dtype=F64)), t1=t1, steps=40, kinetic=0.5, jacobian_norm=0.25)
    x = _points(8, 3)
    with torch.set_grad_enabled(grad):
        z, ladj = cnf(x)
    r = cnf.last_regularisers
    # z_t = exp(a (t - t1)) x: K = int_0^t1 a^2 e^{2a(t - t1)} |x|^2 dt; Rademacher: |eps^T a I|^2 = 3 a^2
    kin = a * (x**2).sum(1) * (1 - math.exp(-2 * a * t1)) / 2
    torch.testing.assert_close(r["kinetic"], kin, atol=1e-7, rtol=0)
    torch.testing.assert_close(r["jacobian"], torch.full((8,), 3 * a**2 * t1, dtype=F64), atol=1e-10, rtol=0)
    want = 0.5 * kin.mean() + 0.25 * 3 * a**2 * t1
    torch.testing.assert_close(cnf.regulariser_loss(), want, atol=1e-7, rtol=0)
    assert r["kinetic"].requires_grad is grad


def test_jacobian_regulariser_estimates_the_frobenius_norm():
    cnf = CNF(LinearField(A), steps=2, probe="gaussian", generator=_gen(0))
    _, _, _, jac = cnf.forward_with_regularisers(_points(4000, 2))
    fro = (A**2).sum().item()
    assert abs(jac.mean().item() - fro) < 4 * jac.std().item() / math.sqrt(4000)


def test_ffjord_loss_adds_the_regularisers():
    torch.manual_seed(0)
    flow = FFJORD(2, width=8, depth=1, steps=2, kinetic=0.3, jacobian_norm=0.2, generator=_gen(1))
    x = torch.randn(16, 2)
    loss = flow.loss(x)
    r = flow.cnf.last_regularisers
    nll = -flow.base.log_prob(flow(x)[0]) - flow(x)[1]
    want = nll.mean() + 0.3 * r["kinetic"].mean() + 0.2 * r["jacobian"].mean()
    torch.testing.assert_close(loss, want, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------ (e) training


def test_maximum_likelihood_fits_a_correlated_gaussian():
    cov = torch.tensor([[1.5, 0.9], [0.9, 1.0]])
    truth = torch.distributions.MultivariateNormal(torch.zeros(2), covariance_matrix=cov)
    g = _gen(0)
    data = torch.randn(4096, 2, generator=g) @ torch.linalg.cholesky(cov).T
    test = torch.randn(2000, 2, generator=g) @ torch.linalg.cholesky(cov).T
    torch.manual_seed(0)
    flow = FFJORD(2, width=32, depth=2, solver="rk4", steps=2)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
    target = -truth.log_prob(test).mean().item()
    with torch.no_grad():
        start = -flow.log_prob(test).mean().item()
    for _ in range(150):
        idx = torch.randint(0, data.shape[0], (256,), generator=g)
        opt.zero_grad()
        flow.loss(data[idx]).backward()
        opt.step()
    with torch.no_grad():
        end = -flow.log_prob(test).mean().item()
    assert start - target > 0.2, (start, target)
    assert end < start and end - target < 0.03, (start, end, target)


# ------------------------------------------------------------------------------------ (f) errors


def test_bad_inputs_raise_clear_errors():
    net = MLP(dim=2, width=8, depth=1)
    cnf = CNF(net, steps=2)
    with pytest.raises(ValueError, match=r"\(B, 2\).*flatten"):
        cnf(torch.randn(3, 2, 1))
    with pytest.raises(ValueError, match=r"\(B, 2\).*dim=3"):
        cnf(torch.randn(3, 3))
    with pytest.raises(ValueError, match=r"unknown solver 'rk5' \(did you mean 'rk4'\?\)"):
        CNF(net, solver="rk5")
    with pytest.raises(ValueError, match="fixed-step solver.*solver='rk4'"):
        CNF(net, solver=Dopri5())
    with pytest.raises(ValueError, match="unknown divergence 'hutchinsn'.*exact, hutchinson"):
        CNF(net, divergence="hutchinsn")
    with pytest.raises(ValueError, match="unknown probe"):
        CNF(net, divergence="hutchinson", probe="uniform")
    with pytest.raises(ValueError, match="steps >= 1"):
        CNF(net, steps=0)
    with pytest.raises(ValueError, match="t1 > 0"):
        CNF(net, t1=0.0)
    with pytest.raises(ValueError, match=">= 0"):
        CNF(net, kinetic=-1.0)
    with pytest.raises(TypeError, match="nn.Module"):
        CNF(lambda z, t: z)
