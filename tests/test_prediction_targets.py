"""Every prediction type against its closed form, Gaussian to Gaussian in float64.

Source N(0, I), data N(m, diag(s^2)); :class:`gaussian.DiagGaussianTargets` has ``E[target | x_t]`` for each
of ``velocity, x1, x0, score, denoiser`` (affine in ``x_t``). Three checks, all through ``FlowMatching.loss``:

1. the regression target, read back from the loss's gradient, regressed on ``x_t`` by least squares at a
   fixed time, has the closed-form slope and intercept, and the loss's gradient w.r.t. an affine model's
   parameters vanishes at that solution (both to a few Monte-Carlo standard errors);
2. over random times the exact field is the loss's minimiser: ``L(f* + eps h) - L(f*) = eps^2 E|h|^2`` for
   several random time-dependent affine directions ``h`` (not only a constant offset, which would only
   show that the residual has zero mean);
3. an affine-in-x model with time features, trained a few hundred steps with each prediction, samples the
   right Gaussian (mean and covariance within 5 standard errors of an i.i.d. draw of the same size).

Flipping the sign of (or doubling) the x0, score or denoiser target in ``core/objectives.py`` fails 1 and 2;
flipping a conversion in ``core/paths.py`` fails 3.
"""

import pytest
import torch
from gaussian import DiagGaussianTargets
from torch import Tensor, nn

from flowforge.continuous import FlowMatching
from flowforge.core.paths import PREDICTIONS, AffinePath, BrownianGamma, StochasticInterpolant
from flowforge.core.schedules import Cosine, Linear
from flowforge.core.time import TimeSampler

M = torch.tensor([1.0, -2.0], dtype=torch.float64)
S = torch.tensor([0.5, 1.5], dtype=torch.float64)
PATHS = {
    "linear": AffinePath(Linear()),
    "cosine": AffinePath(Cosine()),
    "interpolant": StochasticInterpolant(Linear(), BrownianGamma(0.5)),
}
# every prediction on every path; "denoiser" (E[z | x_t]) exists only where there is a z
CASES = [(p, k) for p in PATHS for k in PREDICTIONS] + [("interpolant", "denoiser")]
IDS = [f"{k}-{p}" for p, k in CASES]
Z = 5.0  # tolerance in Monte-Carlo standard errors (the checks are deterministic: fixed seeds)


def test_every_prediction_is_covered():
    from flowforge.core.objectives import TARGETS

    assert {k for _, k in CASES} == set(TARGETS) | set(PREDICTIONS)


def _data(n: int, seed: int) -> Tensor:
    return M + S * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class FixedTime(TimeSampler):
    def __init__(self, t: float) -> None:
        self.t = t

    def from_uniform(self, u: Tensor) -> Tensor:
        return torch.full_like(u, self.t)


class Recorder(nn.Module):
    """``f(x, t) = base(x, t) + x W^T + b``; keeps ``x`` and the output, whose gradient gives the residual."""

    def __init__(self, base, slope: Tensor | None = None, offset: Tensor | None = None) -> None:
        super().__init__()
        self.base = base
        self.W = nn.Parameter(torch.diag(slope) if slope is not None else torch.zeros(2, 2, dtype=M.dtype))
        self.b = nn.Parameter(offset.clone() if offset is not None else torch.zeros(2, dtype=M.dtype))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        out = x @ self.W.T + self.b
        if self.base is not None:
            out = out + self.base(x, t)
        out.retain_grad()
        self.x, self.t, self.out = x, t, out
        return out

    def residual(self) -> Tensor:
        """``pred - target`` per sample, from d(mean squared error)/d(pred) = 2 (pred - target) / (n d)."""
        return self.out.grad * self.out.numel() / 2


@pytest.mark.parametrize("path_id, prediction", CASES, ids=IDS)
def test_target_regressed_on_x_t_has_the_closed_form_slope_and_intercept(path_id, prediction):
    path = PATHS[path_id]
    gt = DiagGaussianTargets(path, M, S)
    n = 40_000
    for i, t in enumerate((0.2, 0.5, 0.8)):
        slope, offset = gt.affine(prediction, torch.tensor([t], dtype=torch.float64))
        probe = Recorder(None, slope[0], offset[0])
        fm = FlowMatching(probe, path=path, prediction=prediction, time=FixedTime(t))
        torch.manual_seed(i)
        fm.loss(_data(n, seed=10 + i)).backward()
        x, r = probe.x.detach(), probe.residual()
        target = probe.out.detach() - r
        # (i) least squares of each target coordinate on (x_t, 1): slope (2 x 2) and intercept (2,)
        X = torch.cat([x, torch.ones(n, 1, dtype=x.dtype)], 1)
        beta = torch.linalg.lstsq(X, target).solution  # (3, 2)
        e = target - X @ beta
        cov = torch.linalg.inv(X.T @ X)
        se = (e.square().sum(0) / (n - 3)).sqrt()[None, :] * cov.diagonal().sqrt()[:, None]  # (3, 2)
        expected = torch.cat([torch.diag(slope[0]), offset], 0)  # rows: d/dx_1, d/dx_2, intercept
        z = (beta - expected) / se
        assert float(z.abs().max()) < Z, (
            f"t={t}: fitted {beta.T.tolist()} vs closed form {expected.T.tolist()}"
        )
        # (ii) the gradient w.r.t. the affine model's parameters vanishes at the exact solution
        per_sample = 2 / (n * 2) * (r[:, :, None] * X[:, None, :])  # (n, 2, 3): d loss_n / d(W | b)
        grad = torch.cat([probe.W.grad, probe.b.grad[:, None]], 1)
        torch.testing.assert_close(grad, per_sample.sum(0))  # the residual read-back is the loss's own
        g_se = per_sample.std(0) * n**0.5
        assert float((grad / g_se).abs().max()) < Z, f"t={t}: gradient {grad.tolist()} at the exact solution"


@pytest.mark.parametrize("path_id, prediction", CASES, ids=IDS)
def test_exact_field_minimises_the_loss_in_random_directions(path_id, prediction):
    path = PATHS[path_id]
    field = DiagGaussianTargets(path, M, S).field(prediction)
    n, eps = 100_000, 0.3
    x1 = _data(n, seed=3)
    g = torch.Generator().manual_seed(7)
    for j in range(3):
        A, b, c = (torch.randn(shape, generator=g, dtype=torch.float64) for shape in ((2, 2), (2,), ()))

        def h(x, t, A=A, b=b, c=c):
            return (x @ A.T + b) * (1 + c * t[:, None])

        losses = []
        for e in (0.0, eps, -eps):
            rec = Recorder(lambda x, t, e=e: field(x, t) + e * h(x, t))
            fm = FlowMatching(rec, path=path, prediction=prediction, t_range=(0.05, 0.8))
            torch.manual_seed(j)
            loss = fm.loss(x1)
            loss.backward()
            losses.append(float(loss))
            if e == 0.0:
                hx = h(rec.x, rec.t).detach()
                cross = (hx * rec.residual()).mean(1)  # h . (f* - target) per sample, mean over coords
        quad = eps**2 * float(hx.square().mean())
        se = 2 * eps * float(cross.std()) / n**0.5
        assert Z * se < 0.25 * quad, "the check must resolve the effect"
        for e, loss in zip((eps, -eps), losses[1:], strict=True):
            # L(f* + e h) - L(f*) = e^2 mean|h|^2 + 2 e mean h.(f* - target); the last term ~ 0 iff f* = E[target|x_t]
            assert abs(loss - losses[0] - quad) < Z * se, (
                f"direction {j}, eps={e}: loss rose by {loss - losses[0]:.5f}, expected {quad:.5f} +- {se:.5f}"
            )


class AffineInX(nn.Module):
    """``f(x, t) = sum_k T_k(2t - 1) (x W_k^T + b_k)`` with Chebyshev time features ``T_0..T_{K-1}``."""

    def __init__(self, d: int = 2, k: int = 6) -> None:
        super().__init__()
        self.k = k
        self.lin = nn.Linear(k * (d + 1), d, bias=False, dtype=torch.float64)
        nn.init.zeros_(self.lin.weight)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        u = 2 * t - 1
        feats = [torch.ones_like(u), u]
        while len(feats) < self.k:
            feats.append(2 * u * feats[-1] - feats[-2])
        phi = torch.stack(feats, 1)  # (B, K)
        x1 = torch.cat([x, torch.ones_like(x[:, :1])], 1)  # (B, d + 1)
        return self.lin((phi[:, :, None] * x1[:, None, :]).flatten(1))


def test_exact_prediction_converts_to_the_exact_velocity():
    for path_id, prediction in CASES:
        gt = DiagGaussianTargets(PATHS[path_id], M, S)
        fm = FlowMatching(
            Recorder(gt.field(prediction)), path=PATHS[path_id], prediction=prediction, event_shape=(2,)
        )
        x, t = torch.randn(64, 2, dtype=torch.float64), 0.05 + 0.9 * torch.rand(64, dtype=torch.float64)
        torch.testing.assert_close(
            fm.velocity(x, t), gt.field("velocity")(x, t), msg=f"{prediction}-{path_id}"
        )


# each prediction once, the x0 conversion on both kinds of path (an interpolant's x0 is not its total noise)
TRAINED = [
    ("linear", "velocity"),
    ("cosine", "x1"),
    ("linear", "x0"),
    ("interpolant", "x0"),
    ("cosine", "score"),
    ("interpolant", "score"),
    ("interpolant", "denoiser"),
]


@pytest.mark.parametrize("path_id, prediction", TRAINED, ids=[f"{k}-{p}" for p, k in TRAINED])
def test_model_trained_with_each_prediction_samples_the_data(path_id, prediction):
    path = PATHS[path_id]
    gt = DiagGaussianTargets(path, M, S)
    weighting = None
    if (
        prediction == "score"
    ):  # lambda(t) = (noise level)^2 tames the variance of -x0/sigma (Song et al., 2021)
        noise = (lambda t: path.gamma(t)[0]) if hasattr(path, "gamma") else (lambda t: path.schedule(t).sigma)
        weighting = lambda t: noise(t) ** 2  # noqa: E731
    torch.manual_seed(0)
    fm = FlowMatching(
        AffineInX(), path=path, prediction=prediction, t_range=(0.02, 0.98), weighting=weighting
    )
    opt = torch.optim.Adam(fm.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 300)
    g = torch.Generator().manual_seed(1)
    for _ in range(300):
        loss = fm.loss(M + S * torch.randn(1024, 2, generator=g, dtype=torch.float64))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    # x0/score/denoiser -> velocity divides by alpha_t (zero at t=0), x1 by sigma_t (zero at t=1), and the
    # error of a predicted noise is amplified by sigma/alpha: integrate from the exact marginal at t0 = 0.1
    # to t1 = 0.9 and compare with the exact marginal there
    t0, t1, n = 0.1, 0.9, 2000
    mu0, v0 = gt.marginal(t0)
    mu, v = gt.marginal(t1)
    start = mu0 + v0.sqrt() * torch.randn(n, 2, generator=g, dtype=torch.float64)
    x = fm.generator().sample(n, x0=start, grid=torch.linspace(t0, t1, 33), solver="rk4", dtype=torch.float64)
    iid = mu + v.sqrt() * torch.randn(n, 2, generator=g, dtype=torch.float64)
    cov_true = torch.diag(v)
    se_mean = (v / n).sqrt()
    se_cov = torch.sqrt((v[:, None] * v[None, :] + cov_true.square()) / (n - 1))  # sd of a sample covariance
    for name, sample in (("i.i.d. draw", iid), ("model", x)):
        z_mean = (sample.mean(0) - mu) / se_mean
        z_cov = (torch.cov(sample.T) - cov_true) / se_cov
        assert float(z_mean.abs().max()) < Z and float(z_cov.abs().max()) < Z, (
            f"{name}: mean {sample.mean(0).tolist()} vs {mu.tolist()}, "
            f"cov {torch.cov(sample.T).tolist()} vs {cov_true.tolist()}"
        )
