"""Flow-matching objective: its minimiser is the closed-form marginal field (Gaussian-to-Gaussian, float64)."""

import pytest
import torch
from gaussian import GaussianFlow
from torch import nn

from flowforge.continuous import FlowMatching
from flowforge.core.couplings import MinibatchOT
from flowforge.core.guidance import ClassifierFreeGuidance, drop_labels
from flowforge.core.objectives import PseudoHuber, SquaredError
from flowforge.core.paths import AffinePath, BrownianGamma, StochasticInterpolant
from flowforge.core.schedules import Cosine, Linear
from flowforge.core.time import LogitNormal
from flowforge.nn import MLP

M, S = torch.tensor([1.0, -2.0], dtype=torch.float64), 0.5


class Exact(nn.Module):
    """A 'network' returning a closed-form field plus a constant offset."""

    def __init__(self, fn, offset=0.0):
        super().__init__()
        self.fn, self.offset = fn, offset
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x, t):
        return self.fn(x, t) + self.offset


def _data(n=200_000):
    return M + S * torch.randn(n, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)


# The minimiser of every prediction's loss (not only that its residual has zero mean, which a constant
# offset shows) is tested against the closed form in test_prediction_targets.py.


def test_velocity_from_x1_prediction_matches_closed_form():
    path = AffinePath(Cosine())
    flow = GaussianFlow(path, M, S)
    fm = FlowMatching(Exact(flow.x1_mean), path=path, prediction="x1", event_shape=(2,))
    x, t = torch.randn(16, 2, dtype=torch.float64), 0.1 + 0.8 * torch.rand(16, dtype=torch.float64)
    torch.testing.assert_close(fm.velocity(x, t), flow.velocity(x, t))


def test_generator_of_exact_field_samples_the_data_and_its_likelihood():
    path = AffinePath(Linear())
    flow = GaussianFlow(path, M, S)
    fm = FlowMatching(Exact(flow.velocity), path=path, event_shape=(2,))
    gen = fm.generator()
    x = gen.sample(
        20_000, solver="rk4", steps=20, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    torch.testing.assert_close(x.mean(0), M, atol=0.02, rtol=0)
    torch.testing.assert_close(x.std(0), torch.full((2,), S, dtype=torch.float64), atol=0.01, rtol=0)
    pts = _data(32)
    torch.testing.assert_close(gen.log_prob(pts, atol=1e-9, rtol=1e-9), flow.log_prob(pts), atol=1e-6, rtol=0)


def test_sde_sampler_with_derived_score_reaches_the_data():
    path = AffinePath(Linear())
    flow = GaussianFlow(path, M, S)
    gen = FlowMatching(Exact(flow.velocity), path=path, event_shape=(2,)).generator()
    x = gen.sample(
        20_000,
        solver="sde",
        steps=200,
        eps=1.0,
        generator=torch.Generator().manual_seed(1),
        dtype=torch.float64,
    )
    torch.testing.assert_close(x.mean(0), M, atol=0.03, rtol=0)
    torch.testing.assert_close(x.std(0), torch.full((2,), S, dtype=torch.float64), atol=0.03, rtol=0)


def test_training_reduces_loss_and_ot_coupling_runs():
    torch.manual_seed(0)
    x1 = _data(4096).float()
    for coupling in (None, MinibatchOT()):
        fm = FlowMatching(MLP(2, 64, 2), coupling=coupling, time=LogitNormal(), distance=PseudoHuber())
        opt = torch.optim.Adam(fm.parameters(), 3e-3)
        first = None
        for _ in range(150):
            loss = fm.loss(x1[torch.randint(0, 4096, (256,))])
            first = first if first is not None else float(loss.detach())
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert float(loss.detach()) < 0.5 * first


def test_pseudo_huber_tends_to_mse_for_large_c_and_to_l2_norm_for_small_c():
    a, b = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
    c = 1e4
    torch.testing.assert_close(PseudoHuber(c)(a, b) * 3 * 2 * c / 3, SquaredError()(a, b), rtol=1e-3, atol=0)
    torch.testing.assert_close(PseudoHuber(1e-12)(a, b) * 3, (a - b).norm(dim=1))


def test_label_dropout_and_cfg_mixing():
    y = torch.arange(10_000) % 3
    dropped = drop_labels(y, 0.2, 3, torch.Generator().manual_seed(0))
    assert abs(float((dropped == 3).float().mean()) - 0.2) < 0.015
    assert torch.equal(dropped[dropped != 3], y[dropped != 3])

    class Lin(nn.Module):
        def forward(self, x, t, y):
            return x + y[:, None].to(x.dtype)

    x, t, y = torch.randn(4, 2), torch.rand(4), torch.tensor([0, 1, 2, 1])
    w = 2.5
    out = ClassifierFreeGuidance(Lin(), w, null_label=7)(x, t, y=y)
    torch.testing.assert_close(out, (x + 7) + w * ((x + y[:, None]) - (x + 7)))


def test_bad_batches_and_options_get_clear_errors():
    fm = FlowMatching(MLP(2, 8, 1))
    with pytest.raises(ValueError, match=r"a batch is x, \(x, y\)"):
        fm.loss("moons")
    with pytest.raises(ValueError, match="unknown prediction"):
        FlowMatching(MLP(2, 8, 1), prediction="eps")
    with pytest.raises(ValueError, match="null_label"):
        FlowMatching(MLP(2, 8, 1), label_dropout=0.1)
    with pytest.raises(ValueError, match="event shape"):
        FlowMatching(MLP(2, 8, 1)).generator().log_prob(torch.zeros(3, 5))


def test_nll_and_bits_per_dim_of_the_exact_flow():
    import math

    from flowforge.metrics import bits_per_dim, nll

    path = AffinePath(Linear())
    flow = GaussianFlow(path, M, S)
    gen = FlowMatching(Exact(flow.velocity), path=path, event_shape=(2,)).generator()
    pts = _data(64)
    exact = float(-flow.log_prob(pts).mean())
    assert nll(gen, pts, batch_size=20, atol=1e-8, rtol=1e-8) == pytest.approx(exact, abs=1e-5)
    assert bits_per_dim(exact, 2) == pytest.approx(exact / (2 * math.log(2)))


@pytest.mark.parametrize(
    "path, prediction",
    [
        (AffinePath(Cosine()), "x0"),
        (AffinePath(Linear()), "score"),
        (StochasticInterpolant(Linear(), BrownianGamma(0.5)), "denoiser"),
    ],
    ids=["x0-cosine", "score-linear", "denoiser-interpolant"],
)
def test_noise_score_and_denoiser_closed_forms_convert_to_the_exact_velocity(path, prediction):
    flow = GaussianFlow(path, M, S)

    def closed_form(x, t):
        score = flow.score(x, t)
        if prediction == "x0":  # E[x0 | x_t] = -sigma_t * score
            return -path.schedule(t).sigma[:, None] * score
        if prediction == "score":
            return score
        return -path.gamma(t)[0][:, None] * score  # E[z | x_t] = -gamma_t * score

    # the generator turns the closed-form prediction into the exact velocity (the loss's minimiser is
    # tested in test_prediction_targets.py)
    gen_field = FlowMatching(Exact(closed_form), path=path, prediction=prediction, event_shape=(2,)).velocity
    x, t = torch.randn(16, 2, dtype=torch.float64), 0.1 + 0.6 * torch.rand(16, dtype=torch.float64)
    torch.testing.assert_close(gen_field(x, t), flow.velocity(x, t))


def test_class_conditional_training_and_guided_sampling_end_to_end():
    from flowforge.train import train

    torch.manual_seed(0)
    means = torch.tensor([[-2.0, 0.0], [2.0, 0.0]])
    y = torch.randint(0, 2, (4096,))
    x = means[y] + 0.3 * torch.randn(4096, 2)
    fm = FlowMatching(MLP(2, 64, 2, num_classes=2), label_dropout=0.2)
    train(fm, (x, y), steps=600, batch_size=256, lr=3e-3, progress=False, seed=0)
    labels = torch.tensor([0] * 500 + [1] * 500)
    for w in (1.0, 2.0):
        s = fm.generator(guidance=w).sample(
            1000, cond={"y": labels}, solver="heun", steps=8, generator=torch.Generator().manual_seed(1)
        )
        right = (s[:, 0] > 0).long() == labels
        assert float(right.float().mean()) > 0.97, f"guidance {w}: {float(right.float().mean())}"
    null = fm.generator().sample(
        2000, cond={"y": torch.full((2000,), 2)}, steps=8, generator=torch.Generator().manual_seed(2)
    )
    share = float((null[:, 0] > 0).float().mean())
    assert 0.35 < share < 0.65, "the null label must give the unconditional mixture"
