"""One-step robot policies (issue 15, DM1): the tasks, their experts, rollouts, the three policies, recipes."""

from __future__ import annotations

import pytest
import torch

from flowforge.apps.policies import (
    ActionSampler,
    Reach2D,
    Reacher,
    RegressionPolicy,
    collect_demos,
    embedding_stats,
    mujoco_available,
    observation_embeddings,
    rollout,
)
from flowforge.continuous import FlowMatching, MeanFlow
from flowforge.core.dispersive import dispersive_loss
from flowforge.nn import ObsMLP

NO_MUJOCO = "gymnasium[mujoco] is not installed (pip install 'flowforge[robot]')"


def _run_expert(env, n, seed, modes=None):
    env.reset(n, generator=torch.Generator().manual_seed(seed))
    if modes is None:
        modes = env.draw_modes(n, generator=torch.Generator().manual_seed(seed + 1))
    for _ in range(env.horizon):
        env.step(env.expert_action(modes))
    return env.success()


@pytest.mark.parametrize("mode", ["random", "cue"])
def test_reach2d_expert_succeeds_on_both_routes_and_the_average_crashes(mode):
    env = Reach2D(mode=mode)
    assert bool(_run_expert(env, 400, 0).all()) and not bool(env.crashed.any())
    for side in (-1.0, 1.0):  # both routes are good
        assert bool(_run_expert(env, 100, 1, modes=torch.full((100,), side, dtype=torch.float64)).all())
    # the demonstrations' average at the start (straight ahead) runs into the obstacle
    env.reset(100, generator=torch.Generator().manual_seed(2))
    for _ in range(env.horizon):
        env.step(torch.tensor([[0.0, 1.0]]).expand(100, 2))
    assert bool(env.crashed.all()) and not bool(env.success().any())


def test_reach2d_step_clips_to_max_step_and_detects_crossing_the_obstacle():
    env = Reach2D(max_step=0.1)
    env.reset(2, generator=torch.Generator().manual_seed(0))
    env.pos = torch.tensor([[-0.5, 0.0], [0.0, -0.45]], dtype=torch.float64)
    before = env.pos.clone()
    env.step(torch.tensor([[3.0, 4.0], [0.0, 0.2]]))
    moved = env.pos - before
    assert torch.allclose(moved[0], torch.tensor([0.06, 0.08], dtype=torch.float64))  # norm 5 -> 1
    assert torch.allclose(moved[1], torch.tensor([0.0, 0.02], dtype=torch.float64))  # norm < 1 kept
    assert env.crashed.tolist() == [False, False]


def test_a_segment_through_the_disc_is_a_crash():
    env = Reach2D(radius=0.4, max_step=1.0)
    env.reset(1, generator=torch.Generator().manual_seed(0))
    env.pos = torch.tensor([[-0.45, 0.0]], dtype=torch.float64)
    env.step(torch.tensor([[0.9, 0.0]]))  # ends at (0.45, 0): both ends outside, the middle inside
    assert bool(env.crashed[0]) and not bool(env.success()[0])


def test_collect_demos_cuts_the_experts_actions_into_chunks():
    env = Reach2D()
    d = collect_demos(env, 3, chunk=3, seed=5)
    # replay: the same seed gives the same starts and modes
    env2 = Reach2D()
    g = torch.Generator().manual_seed(5)
    obs = env2.reset(3, generator=g)
    modes = env2.draw_modes(3, generator=g)
    acts, obs_seq = [], []
    for _ in range(env2.horizon):
        live = ~env2.done()
        a = env2.expert_action(modes)
        acts.append((a, live))
        obs_seq.append((obs, live))
        obs = env2.step(a)
    first = [a[0] for a, live in acts if live[0]]  # episode 0's live actions
    n0 = len(first)
    assert torch.equal(d.obs[0], obs_seq[0][0][0])
    assert torch.equal(d.actions[0], torch.cat(first[:3]))
    # the last live step of episode 0 repeats its last action to fill the chunk
    last_rows = d.actions[:n0][-1].reshape(3, 2)
    assert torch.equal(last_rows[1], first[-1]) and torch.equal(last_rows[2], first[-1])
    batch = d(7, torch.Generator().manual_seed(0))
    assert batch["x"].shape == (7, 6) and batch["obs"].shape == (7, 4)


def _meanflow(chunk=2, **kw):
    torch.manual_seed(0)
    return MeanFlow(ObsMLP(2 * chunk, 4, 16, 2, two_times=True), event_shape=(2 * chunk,), **kw).double()


def test_rollout_is_reproducible_from_its_seed():
    model = _meanflow().float()
    pi = ActionSampler(model, steps=1)
    runs = [rollout(Reach2D(), pi, 16, chunk=2, seed=s) for s in (3, 3, 4)]
    env_a, env_b = Reach2D(), Reach2D()
    rollout(env_a, pi, 16, chunk=2, seed=3)
    rollout(env_b, pi, 16, chunk=2, seed=3)
    assert torch.equal(env_a.pos, env_b.pos) and torch.equal(runs[0].success, runs[1].success)
    env_c = Reach2D()
    rollout(env_c, pi, 16, chunk=2, seed=4)
    assert not torch.equal(env_a.pos, env_c.pos)
    assert runs[0].calls == 20  # 40 steps, 2 actions a call


def test_meanflow_policy_one_step_is_x0_plus_average_velocity():
    model = _meanflow(chunk=2)
    obs = torch.randn(5, 4, dtype=torch.float64)
    pi = ActionSampler(model, steps=1, clamp=None)
    a = pi(obs, generator=torch.Generator().manual_seed(1))
    x0 = torch.randn(5, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        u = model.net(x0, torch.ones(5, dtype=torch.float64), obs=obs, r=torch.zeros(5, dtype=torch.float64))
    assert torch.allclose(a.double(), x0 + u, atol=1e-12)
    # clamped version is the clamp of the same
    a1 = ActionSampler(model, steps=1)(obs, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(a1.double(), (x0 + u).clamp(-1, 1), atol=1e-12)


def test_flow_policy_is_k_euler_steps_of_the_conditional_velocity():
    torch.manual_seed(0)
    fm = FlowMatching(ObsMLP(2, 4, 16, 2)).double()
    obs = torch.randn(3, 4, dtype=torch.float64)
    a = ActionSampler(fm, steps=4, clamp=None)(obs, generator=torch.Generator().manual_seed(2))
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        for k in range(4):
            x = x + 0.25 * fm.net(x, torch.full((3,), k / 4, dtype=torch.float64), obs=obs)
    assert torch.allclose(a.double(), x, atol=1e-12)


def test_dispersive_switch_adds_weight_times_dispersive_loss_of_the_observation_embedding():
    batch = {"x": torch.randn(32, 4, dtype=torch.float64), "obs": torch.randn(32, 4, dtype=torch.float64)}
    off = _meanflow()
    on = _meanflow(dispersive_weight=0.7, dispersive_layers=("obs_embed",), tau=0.5)
    on.load_state_dict(off.state_dict())
    torch.manual_seed(1)
    l_off = off.loss(batch)
    torch.manual_seed(1)
    l_on = on.loss(batch)
    h = observation_embeddings(on.net, batch["obs"])
    expected = 0.7 * dispersive_loss(h, 0.5)
    assert float(expected) < -1e-3  # the term is not trivially zero
    assert torch.allclose(l_on - l_off, expected, rtol=1e-9, atol=1e-12)
    # its gradient reaches the observation encoder: grad(on) - grad(off) = grad of the dispersive term
    l_on.backward()
    l_off.backward()
    w = on.net.obs_embed[0].weight
    h = on.net.obs_embed(batch["obs"])
    (g_disp,) = torch.autograd.grad(0.7 * dispersive_loss(h, 0.5), w)
    assert g_disp.abs().max() > 1e-6
    assert torch.allclose(w.grad - off.net.obs_embed[0].weight.grad, g_disp, atol=1e-10)


def test_regression_policy_is_the_same_net_at_x0_t0_and_fits_the_conditional_mean():
    torch.manual_seed(0)
    net = ObsMLP(2, 4, 32, 2).double()
    pol = RegressionPolicy(net)
    obs = torch.randn(6, 4, dtype=torch.float64)
    assert torch.equal(pol.act(obs), net(torch.zeros(6, 2).double(), torch.zeros(6).double(), obs=obs))
    # bimodal targets +-1 for one observation: MSE's optimum is their mean, 0
    o = torch.zeros(64, 4, dtype=torch.float64)
    a = torch.cat([torch.ones(32, 2), -torch.ones(32, 2)]).double()
    opt = torch.optim.Adam(pol.parameters(), 1e-2)
    for _ in range(300):
        opt.zero_grad()
        pol.loss({"x": a, "obs": o}).backward()
        opt.step()
    assert pol.act(o[:1]).abs().max() < 1e-2


def test_embedding_stats_on_known_embeddings():
    s = embedding_stats(torch.eye(4, dtype=torch.float64))
    assert s["effective_rank"] == pytest.approx(3.0)  # centred: three equal singular values
    assert s["mean_distance"] == pytest.approx(2**0.5 / 2)
    assert s["dispersive"] == pytest.approx(float(torch.log(torch.tensor((4 + 12 * torch.e**-0.5) / 16))))
    collapsed = embedding_stats(torch.ones(5, 3, dtype=torch.float64))
    assert collapsed["effective_rank"] == pytest.approx(1.0) and collapsed["mean_distance"] == 0.0


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="mode='random'"):
        Reach2D(mode="left")
    with pytest.raises(ValueError, match="below the obstacle"):
        Reach2D(start_y=0.0)
    env = Reach2D()
    env.reset(3)
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        env.step(torch.zeros(3, 4))
    net = ObsMLP(2, 4, 8, 1)
    with pytest.raises(ValueError, match="obs="):
        net(torch.zeros(2, 2), torch.zeros(2))
    with pytest.raises(ValueError, match=r"\(B, obs_dim\)"):
        net(torch.zeros(2, 2), torch.zeros(2), obs=torch.zeros(2, 3))
    with pytest.raises(TypeError, match="FlowMatching, MeanFlow or RegressionPolicy"):
        ActionSampler(net)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        ActionSampler(FlowMatching(net), steps=0)
    with pytest.raises(ValueError, match="execute"):
        rollout(env, ActionSampler(FlowMatching(net)), 2, chunk=1, execute=2)
    with pytest.raises(ValueError, match="chunk"):
        rollout(env, ActionSampler(FlowMatching(net), steps=1), 2, chunk=3)
    with pytest.raises(ValueError, match="dispersive_layers"):
        MeanFlow(ObsMLP(2, 4, 8, 1, two_times=True), dispersive_weight=0.5)
    from flowforge.recipes import train_recipe

    with pytest.raises(ValueError, match="method"):
        train_recipe("reach-flow", overrides={"method": "ddpm"}, out="/tmp/never", steps=1, progress=False)


def test_reach_recipes_train_and_evaluate(tmp_path):
    from flowforge.recipes import evaluate, sample, train_recipe

    over = {"n_demos": 20, "width": 16, "depth": 1, "eval_episodes": 16, "batch_size": 32}
    train_recipe("reach-meanflow-disp", overrides=over, out=tmp_path / "mfd", steps=5, progress=False)
    res = evaluate(tmp_path / "mfd")
    assert res["expert_success"] == 1.0 and 0.0 <= res["success_rate"] <= 1.0
    assert res["steps"] == 1 and res["ms_per_action"] > 0 and 1.0 <= res["effective_rank"] <= 16
    train_recipe("reach-flow", overrides=over, out=tmp_path / "fm", steps=5, progress=False)
    assert evaluate(tmp_path / "fm", steps=3, metrics=["success_rate"])["steps"] == 3
    assert sample(tmp_path / "fm", 4, steps=2).shape == (4, 8)
    train_recipe("reach-mse", overrides=over, out=tmp_path / "mse", steps=5, progress=False)
    assert evaluate(tmp_path / "mse", n_samples=8)["episodes"] == 8


@pytest.mark.skipif(not mujoco_available(), reason=NO_MUJOCO)
def test_reacher_expert_reaches_with_both_elbow_signs():
    env = Reacher()
    for side in (-1.0, 1.0):
        ok = _run_expert(env, 12, 0, modes=torch.full((12,), side, dtype=torch.float64))
        assert ok.float().mean() >= 0.9
    # doing nothing fails
    env.reset(12, generator=torch.Generator().manual_seed(0))
    for _ in range(env.horizon):
        env.step(torch.zeros(12, 2))
    assert env.success().float().mean() < 0.3


@pytest.mark.skipif(not mujoco_available(), reason=NO_MUJOCO)
def test_reacher_recipe_trains_and_evaluates(tmp_path):
    from flowforge.recipes import evaluate, train_recipe

    over = {"n_demos": 6, "width": 16, "depth": 1, "eval_episodes": 6, "batch_size": 32}
    train_recipe("reacher-meanflow", overrides=over, out=tmp_path / "r", steps=3, progress=False)
    res = evaluate(tmp_path / "r")
    assert res["expert_success"] >= 0.8 and res["chunk"] == 2
