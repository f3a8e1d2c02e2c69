"""Active matter (AOUP): simulator, closed forms, score learning, probability flow and EPR, against analytic truth."""

from __future__ import annotations

import math

import pytest
import torch

from flowforge.apps.active_matter import (
    AOUP,
    StationaryScore,
    box_half_width,
    em_step,
    entropy_production,
    epr_closed_form,
    epr_heat,
    epr_lyapunov,
    epr_split,
    equilibrium_score,
    exact_score,
    exact_step,
    exact_transition,
    implicit_score_matching_loss,
    increment_dsm_loss,
    initial_state,
    jacobian_diagonal,
    minimum_image,
    pair_displacements,
    probability_flow_velocity,
    simulate_stationary,
    solve_lyapunov,
    spatial_decomposition,
    stationary_covariance,
    wrap,
)
from flowforge.apps.active_matter.trap import drift_matrix, noise_matrix
from flowforge.nn import MLP, ParticleNet

F64 = torch.float64
#: (A, gamma, v0, eps, d) -> (EPR, x-part, g-part): the verified reference's table (§3.4)
TABLE = [
    ((1.0, 1.0, 1.0, 0.1, 2), (10.0, 8.5714, 1.4286)),
    ((0.5, 2.0, 0.3, 0.05, 3), (4.32, 3.7718, 0.5482)),
    ((0.035, 0.01, 0.1, 0.01, 2), (0.4444444444, 0.3862, 0.0582)),
    ((2.0, 0.1, 1.5, 1.0, 1), (0.1071428571, 0.0101, 0.0971)),
    ((1.0, 1.0, 2.0, 0.5, 2), (8.0, 6.6667, 1.3333)),
]


def _trap(row, n=1):
    A, gamma, v0, eps, d = row
    return AOUP(n_particles=n, dim=d, v0=v0, gamma=gamma, eps=eps, A=A)


def _full_covariance(system):
    """The covariance of the flattened state ``(N, 2, d)`` (independent 2x2 blocks)."""
    S = stationary_covariance(system)
    N, d = system.n_particles, system.dim
    C = torch.zeros(N * 2 * d, N * 2 * d, dtype=F64)
    for i in range(N):
        for a in range(2):
            for b in range(2):
                for k in range(d):
                    C[i * 2 * d + a * d + k, i * 2 * d + b * d + k] = S[a, b]
    return C


def _sigma_points(system):
    """``2n`` states whose empirical second moments are exactly the stationary covariance: the estimators
    (quadratic in z for a linear system) then give the Gaussian expectation exactly."""
    C = _full_covariance(system)
    n = C.shape[0]
    L = torch.linalg.cholesky(C)
    pts = math.sqrt(n) * torch.cat([L.T, -L.T])
    return pts.reshape(-1, *system.state_shape)


# ---------------------------------------------------------------- periodic box
def test_minimum_image_is_the_nearest_periodic_image():
    g = torch.Generator().manual_seed(0)
    L = 1.7
    r = (torch.rand(500, 2, generator=g, dtype=F64) - 0.5) * 20
    m = minimum_image(r, L)
    assert (m.abs() <= L + 1e-12).all()
    # brute force over images: the shortest of r + 2L k
    shifts = torch.arange(-8, 9, dtype=F64) * 2 * L
    best = (r[:, :, None] + shifts).abs().min(-1).values
    assert torch.allclose(m.abs(), best, atol=1e-12)
    w = wrap(r, L)
    assert ((w >= -L) & (w < L)).all() and torch.allclose(wrap(w, L), w)
    assert torch.allclose(minimum_image(w - r, L), torch.zeros_like(r), atol=1e-12)  # wrapping moves by 2L k
    x = (torch.rand(3, 5, 2, generator=g, dtype=F64) - 0.5) * 2 * L
    P = pair_displacements(x, L)
    assert torch.allclose(P, -P.transpose(1, 2)) and (P.abs() <= L + 1e-12).all()


def test_repulsion_obeys_newton_and_matches_the_brute_force_images():
    g = torch.Generator().manual_seed(1)
    sys = AOUP(n_particles=6, k=1.0, box=2.5, A=0.0)
    x = (torch.rand(4, 6, 2, generator=g, dtype=F64) - 0.5) * 5
    f = sys.repulsion(x)
    assert torch.allclose(f.sum(1), torch.zeros(4, 2, dtype=F64), atol=1e-12)  # action = reaction
    # brute force: sum over all periodic images of every other particle (the box is wider than 2 * 2r,
    # and softplus is tiny but not zero beyond 2r, so compare to the nearest image within tolerance)
    sp = torch.nn.functional.softplus
    ref = torch.zeros_like(x)
    for i in range(6):
        for j in range(6):
            if i != j:
                r = x[:, i] - x[:, j]
                r = r - 5.0 * torch.round(r / 5.0)
                rho = r.norm(dim=-1, keepdim=True)
                ref[:, i] += sp(2 - rho, beta=7.5) * r / rho
    assert torch.allclose(f, ref, atol=1e-12)


def test_drift_divergence_matches_autograd():
    sys = AOUP(n_particles=5, v0=1.3, k=2.0, A=0.2, eps=0.1, box=3.0)
    z = initial_state(sys, 7, generator=torch.Generator().manual_seed(2))
    _, diag = jacobian_diagonal(sys.drift, z)
    assert torch.allclose(diag.sum(-1), sys.drift_divergence(z), atol=1e-12)


# ---------------------------------------------------------------- closed forms
@pytest.mark.parametrize("row,expect", TABLE)
def test_lyapunov_and_closed_form_epr_match_the_reference_table(row, expect):
    sys = _trap(row)
    A, gamma, v0, eps, d = row
    S = stationary_covariance(sys)
    B, D = drift_matrix(sys), noise_matrix(sys)
    assert torch.allclose(B @ S + S @ B.T, 2 * D, atol=1e-12)
    c = v0 / (A + gamma)
    assert torch.allclose(S, torch.tensor([[(eps + v0 * c) / A, c], [c, 1.0]], dtype=F64), atol=1e-12)
    assert epr_closed_form(sys) == pytest.approx(expect[0], rel=1e-9)
    assert epr_lyapunov(sys) == pytest.approx(epr_closed_form(sys), rel=1e-10)
    x_part, g_part = epr_split(sys)
    assert (x_part, g_part) == pytest.approx(expect[1:], abs=1e-4)


def test_solve_lyapunov_on_a_random_stable_matrix():
    g = torch.Generator().manual_seed(3)
    M = torch.randn(4, 4, generator=g, dtype=F64)
    B = M @ M.T + 0.5 * torch.eye(4, dtype=F64) + 0.3 * (M - M.T)
    Q = torch.eye(4, dtype=F64)
    S = solve_lyapunov(B, Q)
    assert torch.allclose(B @ S + S @ B.T, Q, atol=1e-12)


def test_exact_transition_is_the_matrix_exponential_and_preserves_the_stationary_law():
    sys = _trap(TABLE[0][0])
    h = 0.37
    Phi, L = exact_transition(sys, h)
    assert torch.allclose(Phi, torch.linalg.matrix_exp(-drift_matrix(sys) * h), atol=1e-13)
    S = stationary_covariance(sys)
    assert torch.allclose(Phi @ S @ Phi.T + L @ L.T, S, atol=1e-12)
    # one exact step from a fixed state: mean e^{-Bh} z0 and covariance Q, by Monte Carlo
    n = 40_000
    z0 = torch.tensor([[1.5, -0.5], [-1.0, 2.0]], dtype=F64)  # (2, d): x and g of one particle
    xi = torch.randn(n, 1, 2, 2, generator=torch.Generator().manual_seed(15), dtype=F64)
    out = exact_step(sys, z0.expand(n, 1, 2, 2), h, xi).z
    Q = S - Phi @ S @ Phi.T
    mean = out.mean(0)[0]
    se = torch.sqrt(Q.diag() / n)[:, None]
    assert ((mean - torch.linalg.matrix_exp(-drift_matrix(sys) * h) @ z0).abs() < 4 * se).all()
    dev = (out - out.mean(0))[:, 0].permute(0, 2, 1).reshape(-1, 2)
    assert torch.allclose(dev.T @ dev / dev.shape[0], Q, atol=4 * float(Q.diag().max()) * math.sqrt(2 / n))


# ---------------------------------------------------------------- simulator
def test_exact_simulator_stationary_covariance_within_monte_carlo_error():
    sys = AOUP(n_particles=2, A=0.5, gamma=2.0, v0=0.3, eps=0.05, dim=3)
    n = 30_000
    z = simulate_stationary(sys, n, generator=torch.Generator().manual_seed(4))
    S = stationary_covariance(sys)
    pairs = z.permute(0, 1, 3, 2).reshape(-1, 2)  # every (particle, dim) is an independent (x, g) draw
    emp = pairs.T @ pairs / pairs.shape[0]
    se = torch.sqrt((S.diag()[:, None] * S.diag()[None, :] + S**2) / pairs.shape[0])  # Gaussian 4th moments
    assert ((emp - S).abs() < 4 * se).all(), (emp, S)
    assert pairs.mean(0).abs().max() < 4 * math.sqrt(float(S.diag().max()) / pairs.shape[0])


def test_em_simulator_stationary_covariance_small_step():
    sys = AOUP(A=1.0, gamma=1.0, v0=1.0, eps=0.1)
    z = simulate_stationary(
        sys,
        16_000,
        dt=2e-3,
        burn_in=8.0,
        thin=2.0,
        n_chains=4000,
        method="em",
        generator=torch.Generator().manual_seed(5),
    )
    pairs = z.permute(0, 1, 3, 2).reshape(-1, 2)
    emp = pairs.T @ pairs / pairs.shape[0]
    S = stationary_covariance(sys)
    # Monte Carlo (~1%) plus the O(dt) bias of Euler-Maruyama on x
    assert torch.allclose(emp, S, rtol=0.05, atol=0.02), (emp, S)


def test_em_step_kernel_score_and_wrap():
    sys = AOUP(n_particles=3, k=1.0, box=2.0, eps=0.2, gamma=0.5)
    z = initial_state(sys, 4, generator=torch.Generator().manual_seed(6))
    xi = torch.randn(z.shape, generator=torch.Generator().manual_seed(7), dtype=F64)
    nxt = em_step(sys, z, 0.01, xi)
    assert ((nxt.z[:, :, 0] >= -2) & (nxt.z[:, :, 0] < 2)).all()
    assert torch.allclose(nxt.kernel_score[:, :, 0], -xi[:, :, 0] / math.sqrt(2 * 0.2 * 0.01))
    assert torch.allclose(nxt.kernel_score[:, :, 1], -xi[:, :, 1] / math.sqrt(1 - math.exp(-2 * 0.5 * 0.01)))


# ---------------------------------------------------------------- EPR estimators
@pytest.mark.parametrize("row,expect", TABLE)
def test_estimators_with_the_exact_score_give_the_closed_form_exactly(row, expect):
    """Sigma points carry the Gaussian expectation exactly: both estimators must equal the closed form."""
    sys = _trap(row, n=2)
    z = _sigma_points(sys)
    ep = entropy_production(sys, z, lambda s: exact_score(sys, s))
    truth = epr_closed_form(sys)
    assert ep.quadratic == pytest.approx(truth, rel=1e-9)
    assert ep.divergence_form == pytest.approx(truth, rel=1e-9)
    assert (ep.x_part, ep.g_part) == pytest.approx(epr_split(sys), rel=1e-8)
    assert ep.per_particle.shape == (z.shape[0], 2)
    assert float(ep.per_particle.mean(0).sum()) == pytest.approx(truth, rel=1e-9)


def test_estimators_with_the_exact_score_by_monte_carlo():
    for sys in (_trap(TABLE[0][0]), AOUP(n_particles=3, v0=0.7, eps=0.2, box=4.0)):
        z = simulate_stationary(sys, 40_000, generator=torch.Generator().manual_seed(8))
        ep = entropy_production(sys, z, lambda s, sy=sys: exact_score(sy, s))
        truth = epr_closed_form(sys)
        assert abs(ep.quadratic - truth) < 4 * ep.quadratic_se, (ep.quadratic, truth, ep.quadratic_se)
        assert abs(ep.divergence_form - truth) < 4 * ep.divergence_form_se


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_estimator_gap_of_a_wrong_score_matches_theory(divergence):
    """For s = s* + delta: quadratic - divergence form = -E[v*.delta] + E[delta^T D delta] (integration by parts).

    delta = M z is linear, so on sigma points the exact divergence gives the expectation exactly; Hutchinson
    is unbiased, so over many probes it agrees within its error.
    """
    sys = _trap(TABLE[0][0], n=2)
    g = torch.Generator().manual_seed(9)
    M = 0.3 * torch.randn(2, 2, generator=g, dtype=F64)

    def delta(z):
        return torch.einsum("ab,nbd->nad", M, z.reshape(-1, 2, sys.dim)).reshape(z.shape)

    z = _sigma_points(sys)
    reps = 1 if divergence == "exact" else 400
    zz = z.repeat(reps, 1, 1, 1)
    ep = entropy_production(
        sys, zz, lambda s: exact_score(sys, s) + delta(s), divergence=divergence, generator=g
    )
    v_star = probability_flow_velocity(sys, z, exact_score(sys, z))
    D = sys.diffusion_like(z)
    d = delta(z)
    theory = float((-(v_star * d) + d * D * d).sum((1, 2, 3)).mean())
    gap = ep.quadratic - ep.divergence_form
    assert abs(theory) > 0.1  # the perturbation is visible
    tol = 1e-9 if divergence == "exact" else 5 * ep.divergence_form_se
    assert gap == pytest.approx(theory, abs=tol)


def test_hypoelliptic_epr_is_the_g_part():
    """eps = 0: D^-1 is the pseudo-inverse, the EPR is the g-part, which tends to N d A (reference §3.4)."""
    sys = AOUP(n_particles=2, A=0.7, gamma=1.3, v0=0.9, eps=0.0)
    z = _sigma_points(sys)
    ep = entropy_production(sys, z, lambda s: exact_score(sys, s))
    assert ep.x_part == 0.0
    assert ep.quadratic == pytest.approx(2 * 2 * 0.7, rel=1e-9)
    assert ep.divergence_form == pytest.approx(ep.quadratic, rel=1e-9)
    with pytest.raises(ValueError, match="eps > 0"):
        epr_closed_form(sys)


def test_spatial_decomposition_integrates_to_the_total():
    sys = AOUP(n_particles=3, v0=0.7, eps=0.2, box=4.0)
    z = simulate_stationary(sys, 2000, generator=torch.Generator().manual_seed(10))
    ep = entropy_production(sys, z, lambda s: exact_score(sys, s))
    m = spatial_decomposition(ep.positions, ep.per_particle, extent=4.0, bins=8)
    assert float(m.density.sum()) * m.cell_area == pytest.approx(ep.quadratic, rel=1e-9)
    assert int(m.counts.sum()) == 2000 * 3


# ---------------------------------------------------------------- score learning
def _fit(model, z, g, *, steps, batch, lr=3e-3):
    """Adam on ``model.loss`` over random minibatches of ``z``."""
    opt = torch.optim.Adam(model.parameters(), lr)
    for _ in range(steps):
        loss_value = model.loss(z[torch.randint(len(z), (batch,), generator=g)])
        opt.zero_grad()
        loss_value.backward()
        opt.step()


def test_score_losses_are_minimised_at_the_exact_score():
    """Along s = c s*, both losses are quadratic in c with minimiser c* = 1 in expectation."""
    sys = _trap(TABLE[0][0])
    g = torch.Generator().manual_seed(11)
    z = simulate_stationary(sys, 20_000, generator=g)

    def c_star(loss):
        l0, l1, l2 = (float(loss(lambda s, c=c: c * exact_score(sys, s)).detach()) for c in (0.0, 1.0, 2.0))
        a, b = (l2 - 2 * l1 + l0) / 2, (l1 - l0) - (l2 - 2 * l1 + l0) / 2  # l(c) = a c^2 + b c + l0
        return -b / (2 * a)

    gg = torch.Generator().manual_seed(12)
    assert c_star(
        lambda s: increment_dsm_loss(s, sys, z, 0.2, generator=torch.Generator().manual_seed(13))
    ) == pytest.approx(1.0, abs=0.03)
    assert c_star(lambda s: implicit_score_matching_loss(s, z)) == pytest.approx(1.0, abs=0.03)
    assert c_star(
        lambda s: implicit_score_matching_loss(s, z, divergence="hutchinson", generator=gg)
    ) == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("loss,divergence", [("dsm", "exact"), ("ism", "exact"), ("ism", "hutchinson")])
def test_short_training_reduces_the_score_error(loss, divergence):
    sys = _trap(TABLE[0][0])
    g = torch.Generator().manual_seed(14)
    z = simulate_stationary(sys, 8000, generator=g).float()
    torch.manual_seed(0)
    model = StationaryScore(
        MLP(dim=(1, 2, 2), width=32, depth=2), sys, loss=loss, dt=0.1, divergence=divergence
    )

    def err():
        with torch.no_grad():
            se = exact_score(sys, z.double())
            return float((model(z).double() - se).square().sum() / se.square().sum())

    before = err()
    _fit(model, z, g, steps=300, batch=128)
    after = err()
    assert after < 0.1 * before and after < 0.05, (before, after)


# ---------------------------------------------------------------- network
def test_particle_net_is_permutation_equivariant_and_periodic():
    torch.manual_seed(0)
    net = ParticleNet(dim=2, channels=2, width=16, depth=2, box=2.0).double()
    z = torch.randn(3, 6, 2, 2, dtype=F64)
    out = net(z, torch.zeros(3, dtype=F64))
    perm = torch.randperm(6)
    assert torch.allclose(net(z[:, perm]), out[:, perm], atol=1e-12)
    shifted = z.clone()
    shifted[:, :, 0] += torch.tensor([0.37, -1.1], dtype=F64)  # translation
    shifted[:, 2, 0, 0] += 4.0  # one particle by a whole box length
    assert torch.allclose(net(shifted), out, atol=1e-10)
    assert torch.allclose(net(z, torch.ones(3, dtype=F64)), out)  # t is ignored
    one = ParticleNet(dim=2, channels=2, width=8, depth=1, absolute=True)
    assert one(torch.randn(2, 1, 2, 2)).shape == (2, 1, 2, 2)


# ---------------------------------------------------------------- bad inputs
def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="set A > 0"):
        AOUP(A=0.0)
    with pytest.raises(ValueError, match="gamma must be"):
        AOUP(A=1.0, gamma=0.0)
    with pytest.raises(ValueError, match="n_particles must be"):
        AOUP(A=1.0, n_particles=0)
    sys = AOUP(n_particles=2, A=1.0)
    with pytest.raises(ValueError, match=r"\(B, N, 2, d\) = \(B, 2, 2, 2\)"):
        sys.drift(torch.zeros(4, 2, 2))
    with pytest.raises(ValueError, match="learn the score"):
        exact_score(AOUP(n_particles=2, k=1.0, box=3.0), torch.zeros(1, 2, 2, 2))
    with pytest.raises(ValueError, match="n_samples"):
        simulate_stationary(sys, 0)
    with pytest.raises(ValueError, match="time step"):
        simulate_stationary(sys, 10, dt=-1.0)
    with pytest.raises(ValueError, match="method="):
        simulate_stationary(sys, 10, method="rk4")
    with pytest.raises(ValueError, match="linear AOUP"):
        exact_step(AOUP(n_particles=2, k=1.0, box=3.0), torch.zeros(1, 2, 2, 2), 0.1, torch.zeros(1, 2, 2, 2))
    with pytest.raises(ValueError, match="loss='dsm'"):
        StationaryScore(MLP(dim=(2, 2, 2)), sys, loss="sliced")
    with pytest.raises(ValueError, match="'exact' or 'hutchinson'"):
        jacobian_diagonal(lambda z: z, torch.zeros(2, 3), "trace")
    with pytest.raises(ValueError, match=r"\(B, N, C, d\)"):
        ParticleNet(dim=2)(torch.zeros(3, 4, 2))
    with pytest.raises(ValueError, match="one per particle"):
        spatial_decomposition(torch.zeros(2, 3, 2), torch.zeros(2, 4), extent=1.0)
    with pytest.raises(ValueError, match="half-width"):
        wrap(torch.zeros(2), -1.0)
    with pytest.raises(ValueError, match="0 < phi < 1"):
        box_half_width(4, 1.5)


# ---------------------------------------------------------------- recipes
def test_aoup_recipes_train_and_evaluate(tmp_path):
    from flowforge.recipes import evaluate, get_recipe, load_run, sample, train_recipe

    train_recipe(
        "aoup-trap",
        overrides={"n_train": 2000, "eval_samples": 4000},
        out=tmp_path / "trap",
        steps=150,
        progress=False,
    )
    res = evaluate(tmp_path / "trap")
    assert set(get_recipe("aoup-trap").default_metrics) <= set(res)
    assert res["epr_closed_form"] == pytest.approx(10.0)
    assert abs(res["rel_err_quadratic"]) < 0.15 and res["score_rel_error"] < 0.2
    assert sample(tmp_path / "trap", 5, steps=3).shape == (5, 1, 2, 2)

    over = {
        "n_particles": 3,
        "n_train": 256,
        "eval_samples": 64,
        "burn_in": 1.0,
        "width": 8,
        "heat_samples": 2000,
    }
    train_recipe("aoup-box", overrides=over, out=tmp_path / "box", steps=5, progress=False)
    res = evaluate(tmp_path / "box")
    assert {"epr_quadratic", "epr_divergence", "estimator_gap", "epr_free", "epr_heat"} <= set(res)
    assert load_run(tmp_path / "box")[0].baseline == "equilibrium"  # the box default
    assert res["epr_heat_se"] > 0 and abs(res["epr_heat"] - 3 * 2 * 1.0 / 0.1) < 0.5 * 60  # below the free 60
    with pytest.raises(ValueError, match="closed form"):
        evaluate(tmp_path / "box", metrics=["epr_closed_form"])


# ---------------------------------------------------------------- equilibrium baseline and score-free EPR
def test_equilibrium_score_is_a_gradient_field_free_of_v0():
    """s_eq = ((b_x - v0 g)/eps, -g): the exact score at v0 = 0, so it does not depend on v0 and its x-part
    is a gradient (a symmetric Jacobian); for a linear trap at v0 = 0 it is the exact score."""
    box = AOUP(n_particles=5, v0=1.3, eps=0.2, k=2.5, box=box_half_width(5, 0.5))
    z = simulate_stationary(box, 4, dt=1e-2, burn_in=2.0, generator=torch.Generator().manual_seed(30))
    still = AOUP(n_particles=5, v0=0.0, eps=0.2, k=2.5, box=box.box)
    assert torch.allclose(equilibrium_score(box, z), equilibrium_score(still, z), atol=1e-12)
    x = z[0, :, 0].clone()

    def sx(flat):
        zz = z[:1].clone()
        zz[0, :, 0] = flat.reshape(x.shape)
        return equilibrium_score(box, zz)[0, :, 0].reshape(-1)

    J = torch.autograd.functional.jacobian(sx, x.reshape(-1))
    assert float(J.abs().max()) > 1.0  # the particles touch: the repulsion is felt
    assert torch.allclose(J, J.T, atol=1e-9)
    trap = AOUP(n_particles=2, A=0.8, v0=0.0, eps=0.3)
    zt = torch.randn(6, 2, 2, 2, dtype=F64, generator=torch.Generator().manual_seed(31))
    assert torch.allclose(equilibrium_score(trap, zt), exact_score(trap, zt))
    with pytest.raises(ValueError, match="eps > 0"):
        equilibrium_score(AOUP(A=1.0, eps=0.0), zt[:, :1])


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_residual_estimators_equal_the_full_score_estimators(divergence):
    """entropy_production(residual=True) on delta must equal the plain call on s_eq + delta: the closed-form
    divergence of D s_eq (= div b) replaces the probed one."""
    sys = AOUP(n_particles=3, v0=0.8, eps=0.1, k=2.5, box=box_half_width(3, 0.5))
    z = simulate_stationary(sys, 64, dt=1e-2, burn_in=2.0, generator=torch.Generator().manual_seed(32))
    torch.manual_seed(3)
    net = ParticleNet(2, 2, 16, 2, box=sys.box).double()
    model = StationaryScore(net, sys, baseline="equilibrium")
    full = entropy_production(sys, z, model, divergence="exact")
    res = entropy_production(sys, z, model.residual, residual=True, divergence=divergence, n_probes=64,
                             generator=torch.Generator().manual_seed(4))  # fmt: skip
    assert res.quadratic == pytest.approx(full.quadratic, rel=1e-9)
    tol = 1e-9 * abs(full.divergence_form) if divergence == "exact" else 5 * full.divergence_form_se
    assert res.divergence_form == pytest.approx(full.divergence_form, abs=tol)
    via_model = model.entropy_production(z, divergence="exact")
    assert via_model.divergence_form == pytest.approx(full.divergence_form, rel=1e-9)


def test_score_free_epr_matches_the_closed_form_and_vanishes_in_equilibrium():
    for row in (TABLE[0][0], TABLE[1][0]):
        sys = _trap(row, n=2)
        z = simulate_stationary(sys, 100_000, generator=torch.Generator().manual_seed(33))
        mean, se = epr_heat(sys, z)
        assert abs(mean - epr_closed_form(sys)) < 4 * se, (mean, se, epr_closed_form(sys))
    # in a box at v0 = 0 (detailed balance) it is zero up to the EM step's O(dt) bias
    still = AOUP(n_particles=4, v0=0.0, eps=0.1, k=2.5, box=box_half_width(4, 0.5))
    z = simulate_stationary(still, 20_000, dt=5e-3, burn_in=5.0, thin=0.5, n_chains=400,
                            generator=torch.Generator().manual_seed(34))  # fmt: skip
    mean, se = epr_heat(still, z)
    assert abs(mean) < 0.05 * 4 * 2 * 1.0**2 / 0.1 and abs(mean) < 6 * se + 0.3, (mean, se)
    with pytest.raises(ValueError, match="eps > 0"):
        epr_heat(AOUP(A=1.0, eps=0.0), z[:2, :1])


def test_equilibrium_baseline_training_recovers_the_trap_epr():
    sys = _trap(TABLE[0][0])
    g = torch.Generator().manual_seed(35)
    z = simulate_stationary(sys, 8000, generator=g).float()
    torch.manual_seed(0)
    model = StationaryScore(MLP(dim=(1, 2, 2), width=32, depth=2), sys, dt=0.1, baseline="equilibrium")
    _fit(model, z, g, steps=400, batch=256)
    ep = model.entropy_production(z)
    assert ep.quadratic == pytest.approx(epr_closed_form(sys), rel=0.05)
    assert ep.divergence_form == pytest.approx(epr_closed_form(sys), rel=0.05)
    with pytest.raises(ValueError, match="baseline"):
        StationaryScore(MLP(dim=(1, 2, 2), width=8, depth=1), sys, baseline="free")


def test_a_projected_score_gives_agreeing_estimators_that_undershoot_by_its_error():
    """The score-matching optimum in a linear class that holds D^-1 b is the D-weighted projection of s*; then
    E[b.e] = 0 and E[s* D e] = -E[e D e] (e = s - s*), so BOTH estimators equal EPR - E[e^T D e]: their
    agreement does not vouch for the EPR, and epr_heat - quadratic reads the score's error. Exact on sigma
    points (every term is a Gaussian quadratic form)."""
    sys = _trap(TABLE[0][0], n=2)
    z = _sigma_points(sys)
    D = sys.diffusion_like(z)
    g = torch.Generator().manual_seed(36)
    M = torch.randn(2, 2, generator=g, dtype=F64)

    def features(s):
        u = torch.einsum("ab,nbd->nad", M, s.reshape(-1, 2, sys.dim)).reshape(s.shape)
        return [sys.drift(s) / sys.diffusion_like(s), u]

    fs, star = features(z), exact_score(sys, z)
    G = torch.tensor([[float((a * D * b).sum((1, 2, 3)).mean()) for b in fs] for a in fs], dtype=F64)
    h = torch.tensor([float((a * D * star).sum((1, 2, 3)).mean()) for a in fs], dtype=F64)
    c = torch.linalg.solve(G, h)

    def score(s):
        return sum(ci * f for ci, f in zip(c, features(s), strict=True))

    e = score(z) - star
    err = float((e * D * e).sum((1, 2, 3)).mean())
    assert err > 0.05 * epr_closed_form(sys)  # the class misses s* visibly
    ep = entropy_production(sys, z, score)
    truth = epr_closed_form(sys)
    assert ep.quadratic == pytest.approx(truth - err, rel=1e-9)
    assert ep.divergence_form == pytest.approx(truth - err, rel=1e-9)
