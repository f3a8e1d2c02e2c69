"""Reward fine-tuning of continuous flows: DanceGRPO, ORW-CFM-W2, AC-Flow-style, FM-MLE (float64 where exact)."""

from __future__ import annotations

import math

import pytest
import torch

from flowforge import FlowMatching
from flowforge.finetune import (
    FMMLE,
    ORWCFM,
    ACFlow,
    ContractiveResidual,
    DanceGRPO,
    HalfPlane,
    ModePreference,
    euler_map,
    gaussian_log_prob,
    group_advantages,
    ode_pairs,
    policy_samples,
    sde_rollout,
    sde_step,
    shifted_grid,
    total_reward,
    weighted_cfm_w2_loss,
)
from flowforge.nn import MLP


def _gauss_velocity(m: float, s: float):
    """Exact velocity of the linear path from N(0, 1) to N(m, s^2) (per dimension; sheet §1)."""

    def v(x, t, **_):
        tb = t.reshape(-1, *([1] * (x.dim() - 1)))
        c = tb**2 * s**2 + (1 - tb) ** 2
        return m + (tb * s**2 - (1 - tb)) / c * (x - tb * m)

    return v


def _flow(seed: int = 0, dtype=torch.float64, width: int = 16) -> FlowMatching:
    torch.manual_seed(seed)
    return FlowMatching(MLP(dim=2, width=width, depth=2), event_shape=(2,)).to(dtype)


# ------------------------------------------------------------------------------------------------ SDE


def test_sde_log_prob_matches_torch_normal():
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(5, 3, generator=g, dtype=torch.float64)
    std = torch.rand(5, generator=g, dtype=torch.float64) + 0.1
    x = mean + torch.randn(5, 3, generator=g, dtype=torch.float64)
    want = torch.distributions.Normal(mean, std[:, None]).log_prob(x).mean(-1)
    torch.testing.assert_close(gaussian_log_prob(x, mean, std), want, rtol=0, atol=1e-12)


def test_sde_step_matches_sheet_formula_and_is_euler_at_eta_zero():
    g = torch.Generator().manual_seed(1)
    x, v = (
        torch.randn(4, 2, generator=g, dtype=torch.float64),
        torch.randn(4, 2, generator=g, dtype=torch.float64),
    )
    t, dt = (
        torch.tensor([0.0, 0.3, 0.6, 0.9], dtype=torch.float64),
        torch.full((4,), 0.05, dtype=torch.float64),
    )
    mean, std = sde_step(v, x, t, dt, 0.7)
    score = -(x - t[:, None] * v) / (1 - t[:, None])  # the sheet's s simplified on the linear path
    torch.testing.assert_close(mean, x + dt[:, None] * (v + 0.5 * 0.49 * score))
    torch.testing.assert_close(std, 0.7 * dt.sqrt())
    torch.testing.assert_close(sde_step(v, x, t, dt, 0.0)[0], x + dt[:, None] * v)


def _moments(eta: float, steps: int, m: float, s: float) -> tuple[list[float], list[float], list[float]]:
    """Exact mean/variance of the discretised chain (each step is affine in x), and the grid."""
    v = _gauss_velocity(m, s)
    grid = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    mu, var, means, variances = 0.0, 1.0, [0.0], [1.0]
    for k in range(steps):
        t = grid[k : k + 1]
        dt = grid[k + 1 : k + 2] - t
        pts = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
        mean, std = sde_step(v(pts, t.expand(2)), pts, t.expand(2), dt.expand(2), eta)
        b, a = float(mean[0, 0]), float(mean[1, 0] - mean[0, 0])
        mu, var = a * mu + b, a * a * var + float(std[0]) ** 2
        means.append(mu)
        variances.append(var)
    return means, variances, grid.tolist()


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
def test_sde_keeps_gaussian_marginals_closed_form(eta):
    m, s = 1.5, 0.4
    means, variances, grid = _moments(eta, 2000, m, s)
    for k in (500, 1000, 1500, 2000):
        t = grid[k]
        assert abs(means[k] - t * m) < 5e-3
        assert abs(variances[k] - (t * t * s * s + (1 - t) ** 2)) < 5e-3


def test_wrong_sign_of_the_score_breaks_the_marginals():
    """The check above can fail: an SDE with -s instead of +s (not marginal-preserving) is caught."""
    m, s, steps = 1.5, 0.4, 2000
    v = _gauss_velocity(m, s)

    def wrong(x, t, **_):  # v - eta^2 s equals the drift of a step with -s in place of +s
        tb = t.reshape(-1, 1)
        return v(x, t) - 1.0 * (-(x - tb * v(x, t)) / (1 - tb))

    grid = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    mu, var = 0.0, 1.0
    for k in range(steps):
        t, dt = grid[k : k + 1].expand(2), (grid[k + 1] - grid[k]).expand(2)
        pts = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
        mean, std = sde_step(wrong(pts, t), pts, t, dt, 1.0)
        a, b = float(mean[1, 0] - mean[0, 0]), float(mean[0, 0])
        mu, var = a * mu + b, a * a * var + float(std[0]) ** 2
    assert abs(var - s * s) > 0.05


def test_sde_rollout_monte_carlo_marginals():
    m, s = 1.5, 0.4
    x0 = torch.randn(20_000, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ro = sde_rollout(
        _gauss_velocity(m, s), x0, shifted_grid(100, 2.0), 0.8, generator=torch.Generator().manual_seed(3)
    )
    assert abs(ro.states[-1].mean().item() - m) < 0.02
    assert abs(ro.states[-1].var().item() - s * s) < 0.02
    assert ro.log_probs.shape == (100, 20_000)


def test_rollout_decodes_x1_hat_of_the_last_step():
    """The reward sees x1_hat = x + (1 - t) v at the last step (the official decode), not the noisy end state."""
    v = _gauss_velocity(1.0, 0.5)
    grid = shifted_grid(5, 3.0)
    ro = sde_rollout(
        v, torch.zeros(4, 1, dtype=torch.float64), grid, 0.9, generator=torch.Generator().manual_seed(1)
    )
    t = grid[-2].expand(4)
    torch.testing.assert_close(ro.x1, ro.states[-2] + (1 - grid[-2]) * v(ro.states[-2], t))
    assert (ro.x1 - ro.states[-1]).abs().max() > 1e-3


# ------------------------------------------------------------------------------------------------ GRPO


def test_group_advantages_zero_mean_unit_std_per_group():
    r = torch.randn(24, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    a = group_advantages(r, 6, clip=100.0).reshape(4, 6)
    torch.testing.assert_close(a.mean(1), torch.zeros(4, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(a.std(1), torch.ones(4, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(
        group_advantages(torch.tensor([1.0, 2.0, 3.0]), 3), torch.tensor([-1.0, 0.0, 1.0])
    )
    # REINFORCE: the batch-mean baseline, no scaling
    torch.testing.assert_close(group_advantages(r, 6, normalize=False), r - r.mean())


def test_ppo_ratio_one_and_no_clipping_on_first_inner_step():
    flow = _flow()

    def run(clip_eps):
        f = _flow()
        f.load_state_dict(flow.state_dict())
        grpo = DanceGRPO(
            f, HalfPlane((1.0, 0.0)), groups=3, group_size=4, steps=6, clip_eps=clip_eps,
            inner_epochs=2, generator=torch.Generator().manual_seed(5),
        )  # fmt: skip
        loss = grpo.loss()
        loss.backward()
        grads = [p.grad.clone() for p in f.parameters()]
        return grpo, grads

    grpo, g_small = run(1e-9)
    assert grpo.last_stats["ratio_dev"] < 1e-12
    assert grpo.last_stats["clip_fraction"] == 0.0
    _, g_none = run(math.inf)
    for a, b in zip(g_small, g_none, strict=True):  # at rho = 1 clipping changes nothing
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # after an update the second inner step has rho != 1
    with torch.no_grad():
        for p, g in zip(grpo.flow.parameters(), g_small, strict=True):
            p -= 0.5 * g / (g.norm() + 1e-12)
    grpo.loss()
    assert grpo.last_stats["ratio_dev"] > 1e-6


def test_grpo_gradient_at_old_policy_is_policy_gradient():
    """Sheet §7(5d): with theta = theta_old the loss gradient is -mean(A grad log pi) over the chosen steps."""
    flow = _flow(1)
    grpo = DanceGRPO(flow, HalfPlane((1.0, 0.0)), groups=2, group_size=4, steps=4, timestep_fraction=1.0,
                     generator=torch.Generator().manual_seed(6))  # fmt: skip
    grpo.loss().backward()
    got = [p.grad.clone() for p in flow.parameters()]
    ro, _, adv, _ = grpo._buffer
    flow.zero_grad()
    k, b = ro.log_probs.shape
    lps = []
    for i in range(k):
        t = ro.times[i].expand(b)
        dt = (ro.times[i + 1] - ro.times[i]).expand(b)
        mean, std = sde_step(flow.velocity(ro.states[i], t), ro.states[i], t, dt, grpo.eta)
        lps.append(gaussian_log_prob(ro.states[i + 1], mean, std))
    (-(adv[None] * torch.stack(lps)).mean()).backward()
    for a, p in zip(got, flow.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad, rtol=1e-8, atol=1e-12)


def test_kl_penalty_is_zero_at_reference_and_positive_after_a_change():
    flow = _flow(2)
    grpo = DanceGRPO(flow, HalfPlane((1.0, 0.0)), groups=2, group_size=4, steps=4, kl_coef=1.0,
                     generator=torch.Generator().manual_seed(7))  # fmt: skip
    grpo.loss()
    assert grpo.last_stats["kl"] == 0.0
    with torch.no_grad():
        flow.net.out.bias += 0.3
    grpo.loss()
    assert grpo.last_stats["kl"] > 1e-4


# ------------------------------------------------------------------------------------------------ ORW / AC


def test_orw_regulariser_zero_at_reference_and_loss_formula():
    flow = _flow(3)
    g = torch.Generator().manual_seed(8)
    x0, x1 = (
        torch.randn(6, 2, generator=g, dtype=torch.float64),
        torch.randn(6, 2, generator=g, dtype=torch.float64),
    )
    t, w = (
        torch.rand(6, generator=g, dtype=torch.float64),
        torch.rand(6, generator=g, dtype=torch.float64) + 0.5,
    )
    ref = _flow(3)
    loss, w2 = weighted_cfm_w2_loss(flow, ref, x0, x1, t, w, alpha=2.0)
    assert w2.item() == 0.0
    flow.zero_grad()
    (loss - weighted_cfm_w2_loss(flow, ref, x0, x1, t, w, alpha=0.0)[0]).backward()
    assert all(p.grad.abs().max() == 0 for p in flow.parameters())  # no pull at the reference
    with torch.no_grad():
        flow.net.out.bias += 0.2
    loss, w2 = weighted_cfm_w2_loss(flow, ref, x0, x1, t, w, alpha=2.0)
    x_t = t[:, None] * x1 + (1 - t[:, None]) * x0
    v, v_ref = flow.velocity(x_t, t), ref.velocity(x_t, t)
    want = (w * ((v - (x1 - x0)) ** 2).mean(1) + 2.0 * ((v - v_ref) ** 2).mean(1)).mean()
    torch.testing.assert_close(loss, want)
    assert w2.item() > 0


def test_acflow_with_zero_critic_equals_orw():
    def pair():
        orw = ORWCFM(_flow(4), HalfPlane((1.0, 0.0)), batch_size=12, sample_steps=2,
                     generator=torch.Generator().manual_seed(9))  # fmt: skip
        ac = ACFlow(_flow(4), HalfPlane((1.0, 0.0)), batch_size=12, sample_steps=2, warmup=0,
                    shaping="none", adv_clip=math.inf, generator=torch.Generator().manual_seed(9))  # fmt: skip
        ac.critic = ac.critic.double()
        for p in ac.critic.parameters():
            torch.nn.init.zeros_(p)
        return orw, ac

    orw, ac = pair()
    for _ in range(2):
        want = orw.loss()
        ac.loss()
        assert abs(ac.last_stats["actor"] - want.item()) < 1e-12
    # and the critic is used after warm-up: a non-zero critic changes the actor's loss
    orw, ac = pair()
    torch.nn.init.constant_(ac.critic.out.bias, 1.0)
    want = orw.loss()
    ac.loss()
    assert abs(ac.last_stats["actor"] - want.item()) > 1e-6


# ------------------------------------------------------------------------------------------------ FM-MLE


@pytest.mark.parametrize("checkpoint", [False, True])
def test_fm_mle_gradient_through_two_step_solver_matches_finite_differences(checkpoint):
    flow = _flow(5, width=8)
    g = torch.Generator().manual_seed(10)
    x0, x1 = (
        torch.randn(5, 2, generator=g, dtype=torch.float64),
        torch.randn(5, 2, generator=g, dtype=torch.float64),
    )
    mle = FMMLE(flow, steps=2, sigma=0.7, checkpoint=checkpoint)
    flow.zero_grad()
    mle.loss((x0, x1)).backward()
    for p in (flow.net.inp.weight, flow.net.out.bias, flow.net.hidden[0].weight):
        for idx in [(0,) * p.dim(), tuple(s - 1 for s in p.shape)]:
            h = 1e-6
            with torch.no_grad():
                p[idx] += h
                up = mle.loss((x0, x1)).item()
                p[idx] -= 2 * h
                down = mle.loss((x0, x1)).item()
                p[idx] += h
            assert abs((up - down) / (2 * h) - p.grad[idx].item()) < 1e-7


def test_euler_map_closed_form():
    # dx/dt = -x with N Euler steps: (1 - 1/N)^N x0
    x0 = torch.ones(1, 1, dtype=torch.float64)
    assert abs(euler_map(lambda x, t: -x, x0, 4).item() - 0.75**4) < 1e-14


def test_fm_mle_lowers_two_step_endpoint_error():
    torch.manual_seed(0)
    v_true = _gauss_velocity(1.0, 0.3)
    flow = _flow(6)
    x0 = torch.randn(256, 2, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    pairs = (x0, ode_pairs(v_true, x0, steps=100))
    mle = FMMLE(flow, steps=2)
    before = mle.loss(pairs).item()
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        mle.loss(pairs).backward()
        opt.step()
    assert mle.loss(pairs).item() < 0.1 * before


def test_contractive_residual_jacobian_bound():
    """sym(d r / d x) <= -k(t)(1 - gamma) I; tight when g is linear with Lipschitz constant exactly gamma."""
    base = _flow(7)
    res = ContractiveResidual(base, k_min=0.5, gamma=0.8).double()
    with torch.no_grad():
        res.a[2].bias.fill_(0.7)
        # g(x, t) = gamma * (x + c) near 0: embed x in two ReLU units kept active by a large bias
        m_in = torch.zeros(64, 3, dtype=torch.float64)
        m_in[0, 0] = m_in[1, 1] = 1.0
        m_out = torch.zeros(2, 64, dtype=torch.float64)
        m_out[0, 0] = m_out[1, 1] = 1.0
        mats = [m_in, torch.eye(64, dtype=torch.float64)]
        for layer, mat in zip(res.g.layers, mats, strict=True):
            layer.parametrizations.weight.original.copy_(mat)
            layer.bias.fill_(10.0)
        res.g.out.parametrizations.weight.original.copy_(m_out)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    t = torch.rand(8, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    res.train()
    with torch.no_grad():
        for _ in range(30):  # converge the power iterations of the spectral norms
            res.g(x, t)
    res.eval()
    k = res.rate(t)
    for i in range(8):
        jac = torch.autograd.functional.jacobian(lambda z, i=i: res.residual(z[None], t[i : i + 1])[0], x[i])
        top = torch.linalg.eigvalsh(0.5 * (jac + jac.T)).max()
        assert top <= -k[i] * (1 - 0.8) + 1e-6
        assert top >= -k[i] * (1 - 0.8) - 1e-3  # the bound is attained: the test can see a looser g


# ------------------------------------------------------------------------------------------------ runs


def _mean_reward(flow, reward) -> float:
    z = torch.randn(512, 2, generator=torch.Generator().manual_seed(99))
    return reward(policy_samples(flow, z, 8)).mean().item()


@pytest.mark.parametrize("method", ["grpo", "reinforce", "orw", "acflow"])
def test_short_2d_run_raises_mean_reward(method):
    torch.manual_seed(0)
    flow = FlowMatching(MLP(dim=2, width=32, depth=2), event_shape=(2,))
    reward = HalfPlane((1.0, 1.0), scale=1.0)
    g = torch.Generator().manual_seed(14)
    if method in ("grpo", "reinforce"):
        ft = DanceGRPO(flow, reward, groups=4, group_size=8, steps=8, advantage="group" if method == "grpo" else "reinforce",
                       same_noise=method == "grpo", generator=g)  # fmt: skip
    elif method == "orw":
        ft = ORWCFM(
            flow, reward, batch_size=64, sample_steps=4, refresh_every=5, beta=3.0, alpha=0.1, generator=g
        )
    else:
        ft = ACFlow(
            flow,
            reward,
            batch_size=64,
            sample_steps=4,
            refresh_every=5,
            warmup=5,
            beta=3.0,
            alpha=0.1,
            generator=g,
        )
    before = _mean_reward(flow, reward)
    opt = torch.optim.Adam([p for p in ft.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(60):
        opt.zero_grad()
        ft.loss().backward()
        opt.step()
    assert _mean_reward(flow, reward) > before + 0.08


# ------------------------------------------------------------------------------------------------ errors


def test_reward_of_wrong_shape_is_a_clear_error():
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        total_reward(lambda x: x, x)
    with pytest.raises(ValueError, match="NaN"):
        total_reward(lambda x: torch.full((4,), float("nan")), x)
    grpo = DanceGRPO(_flow(dtype=torch.float32), lambda x: x.sum(), groups=2, group_size=2, steps=2)
    with pytest.raises(ValueError, match="one value per sample"):
        grpo.loss()


def test_bad_settings_are_clear_errors():
    flow = _flow()
    with pytest.raises(ValueError, match="unknown advantage"):
        DanceGRPO(flow, HalfPlane((1.0, 0.0)), advantage="ppo")
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.randn(10), 4)
    with pytest.raises(TypeError, match="velocity"):
        ORWCFM(torch.nn.Linear(2, 2), HalfPlane((1.0, 0.0)))
    with pytest.raises(ValueError, match="pairs"):
        FMMLE(flow).loss(torch.randn(3, 2))
    with pytest.raises(ValueError, match="unknown shaping"):
        ACFlow(flow, HalfPlane((1.0, 0.0)), shaping="rank")
    with pytest.raises(ValueError, match="indices in 0..7"):
        ModePreference.eight_gaussians([9])


# ------------------------------------------------------------------------------------------------ CLI


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    from flowforge.recipes import train_recipe

    out = tmp_path_factory.mktemp("ft") / "eg"
    train_recipe("eight-gaussians", overrides={"width": 16, "depth": 2, "warmup": 0}, out=out, steps=20,
                 progress=False)  # fmt: skip
    return out


@pytest.mark.parametrize("method", ["grpo", "orw", "acflow", "mle"])
def test_cli_finetune_writes_a_run_folder(base_run, method, tmp_path, capsys):
    from flowforge.cli.main import main
    from flowforge.recipes import evaluate, read_config

    out = tmp_path / method
    sets = ["pairs=256", "pair_steps=4", "batch_size=32"] if method == "mle" else ["groups=2", "group_size=4"] if method == "grpo" else ["policy_batch=16"]  # fmt: skip
    assert main(["finetune", str(base_run), "--method", method, "--steps", "3", "--out", str(out), "--quiet",
                 "--set", *sets]) == 0  # fmt: skip
    assert read_config(out)["recipe"] == f"eight-gaussians-{method}"
    res = evaluate(out, n_samples=200)
    assert "swd" in res and (method == "mle" or "reward" in res)


def test_cli_finetune_bad_inputs(base_run, tmp_path, capsys):
    from flowforge.cli.main import main

    assert main(["finetune", str(base_run), "--method", "ppo"]) == 2
    assert "unknown fine-tuning method 'ppo'" in capsys.readouterr().err
    assert main(["finetune", str(base_run), "--method", "grpo", "--reward", "nope"]) == 2
    assert "unknown reward 'nope'" in capsys.readouterr().err
    assert main(["finetune", str(tmp_path / "none"), "--method", "grpo"]) == 2
    assert "no run folder" in capsys.readouterr().err
    bad = tmp_path / "rew.py"
    bad.write_text("def r(x):\n    return x\n")
    code = main(["finetune", str(base_run), "--method", "orw", "--reward", f"{bad}:r", "--steps", "1", "--quiet",
                 "--out", str(tmp_path / "o"), "--set", "policy_batch=8"])  # fmt: skip
    assert code == 2
    assert "one value per sample" in capsys.readouterr().err
