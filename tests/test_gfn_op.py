"""Order-preserving GFlowNets on the multi-objective hypergrid (Chen & Mauch 2024): exact Pareto fronts,
the OP loss against a hand computation, gradients, a short training run and the CLI round trip."""

import itertools
import json
import math

import pytest
import torch

import flowforge.recipes.gflownet_moo  # noqa: F401  (registers hypergrid-moo-op / hypergrid-moo-tb)
from flowforge.cli import main
from flowforge.gflownet import (
    OBJECTIVE_FUNCTIONS,
    MultiObjectiveHyperGrid,
    OrderPreservingTB,
    dirichlet_preferences,
    pareto_front,
    pareto_share,
)
from flowforge.gflownet.envs import HyperGrid
from flowforge.recipes import get_recipe

torch.set_num_threads(1)


def _brute_front(values):
    v = values.tolist()
    out = []
    for i, a in enumerate(v):
        dom = any(
            all(b[k] >= a[k] for k in range(len(a))) and any(b[k] > a[k] for k in range(len(a)))
            for j, b in enumerate(v)
            if j != i
        )
        out.append(not dom)
    return out


@pytest.mark.parametrize("k", [1, 2, 3])
def test_pareto_front_matches_brute_force(k):
    g = torch.Generator().manual_seed(k)
    for n in (1, 7, 60):
        vals = torch.randint(0, 5, (n, k), generator=g).double()  # many ties and duplicates
        assert pareto_front(vals).tolist() == _brute_front(vals)
        cont = torch.rand(n, k, generator=g, dtype=torch.float64)
        assert pareto_front(cont, chunk=8).tolist() == _brute_front(cont)


def test_pareto_front_bad_input():
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        pareto_front(torch.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        pareto_front(torch.tensor([[0.0, float("nan")]]))


@pytest.mark.parametrize(
    "names", list(itertools.combinations(OBJECTIVE_FUNCTIONS, 2)) + [tuple(OBJECTIVE_FUNCTIONS)]
)
def test_grid_front_by_enumeration(names):
    env = MultiObjectiveHyperGrid(ndim=2, height=12, objectives=names)
    f = env.objectives(env.all_states())
    assert f.dtype == torch.float64 and f.shape == (144, len(names))
    assert torch.allclose(f.min(0).values, torch.zeros(len(names), dtype=torch.float64))
    assert torch.allclose(f.max(0).values, torch.ones(len(names), dtype=torch.float64))
    assert env.pareto_mask().tolist() == _brute_front(f)
    front = env.pareto_states
    assert env.n_modes == front.shape[0] and bool(env.mode_mask(front).all())
    assert env.mode_id(front).tolist() == list(range(env.n_modes))
    assert pareto_share(env, env.all_states()) == 1.0 and pareto_share(env, front[:1]) == 1 / env.n_modes


def test_objective_functions_at_known_points():
    # Branin's minima are 0.397887 at (pi, 2.275) (negated here: higher is better); Beale(3, 0.5) = 0
    x = torch.tensor([[((math.pi + 5) / 15 - 0.5) * 2, (2.275 / 15 - 0.5) * 2]], dtype=torch.float64)
    assert float(OBJECTIVE_FUNCTIONS["branin"](x)) == pytest.approx(-0.397887, abs=1e-6)
    assert float(OBJECTIVE_FUNCTIONS["beale"](torch.tensor([[3.0, 0.5]], dtype=torch.float64))) == 0.0
    # Currin at v = 0 has factor 1: (2300 + 1900 + 2092 + 60) / (100 + 500 + 4 + 20) at u = 1
    c = OBJECTIVE_FUNCTIONS["currin"](torch.tensor([[1.0, -1.0]], dtype=torch.float64))
    assert float(c) == pytest.approx(6352 / 624)


def test_scalarised_log_reward_is_exact_and_finite():
    env = MultiObjectiveHyperGrid(ndim=2, height=10, preferences=[3.0, 1.0], beta=4.0)
    s = env.all_states()
    f = env.objectives(s)
    r = (0.75 * f[:, 0] + 0.25 * f[:, 1]).clamp_min(1e-12) ** 4
    lr = env.log_reward(s, torch.float64)
    assert torch.allclose(lr, (r / r.sum()).log()) and bool(lr.isfinite().all())
    assert env.log_partition == pytest.approx(0.0, abs=1e-12)
    w = dirichlet_preferences(5, 2, seed=1)
    mix = env.scalarised(w, 2.0)
    parts = [(env.scalarised(wj, 2.0).log_reward(s, torch.float64)).exp() for wj in w]
    assert torch.allclose(mix.log_reward(s, torch.float64).exp(), torch.stack(parts).mean(0))


def test_bad_env_arguments_are_clear():
    with pytest.raises(ValueError, match="valid objectives: branin, currin, shubert, beale"):
        MultiObjectiveHyperGrid(objectives=("branin", "rosenbrock"))
    with pytest.raises(ValueError, match="ndim=2"):
        MultiObjectiveHyperGrid(ndim=3)
    with pytest.raises(ValueError, match="two distinct"):
        MultiObjectiveHyperGrid(objectives=("branin", "branin"))
    with pytest.raises(ValueError, match="non-negative"):
        MultiObjectiveHyperGrid(preferences=[1.0, -1.0])
    with pytest.raises(ValueError, match="objectives"):
        OrderPreservingTB(HyperGrid(2, 4))


def test_op_loss_is_the_cross_entropy_by_hand():
    torch.manual_seed(0)
    env = MultiObjectiveHyperGrid(ndim=2, height=6)
    op = OrderPreservingTB(env, width=16, depth=1, init_log_z=3.0)
    tr = op.sample(9, generator=torch.Generator().manual_seed(3))
    log_r = (3.0 + tr.log_pf.sum(0) - tr.log_pb.sum(0)).tolist()
    front = _brute_front(env.objectives(tr.terminal))
    m = sum(front)
    lse = math.log(sum(math.exp(v) for v in log_r))
    by_hand = -sum((1 / m) * (v - lse) for v, p in zip(log_r, front, strict=True) if p)
    assert op.loss(tr).item() == pytest.approx(by_hand, rel=1e-5)
    # uniform P_B: log P_B of a move to s' is -log(#parents of s'), of the stop action 0; every transition
    moves = stops = 0
    for t, b in tr.valid.nonzero().tolist():
        if int(tr.actions[t, b]) == env.n_actions - 1:
            stops += 1
            assert float(tr.log_pb[t, b]) == 0.0
        else:
            moves += 1
            parents = int((tr.states[t + 1, b] > 0).sum())
            assert float(tr.log_pb[t, b]) == pytest.approx(-math.log(parents), abs=1e-6), (t, b)
    assert moves > 0 and stops == 9, (moves, stops)
    # the target is 1/|Pareto(X)| on the batch's front; log Z shifts nothing
    assert op.pareto_target(tr).tolist() == pytest.approx([p / m for p in front])
    with torch.no_grad():
        op.log_z_raw.add_(1.0)
    assert op.loss(tr).item() == pytest.approx(by_hand, rel=1e-5)


def test_op_loss_on_a_one_state_batch_is_zero():
    env = MultiObjectiveHyperGrid(ndim=2, height=4)
    op = OrderPreservingTB(env, width=8, depth=1)
    assert op.loss(op.sample(1, generator=torch.Generator().manual_seed(0))).item() == pytest.approx(
        0.0, abs=1e-7
    )


def test_gradients_reach_pf_and_pb_not_log_z():
    torch.manual_seed(0)
    env = MultiObjectiveHyperGrid(ndim=2, height=6)
    op = OrderPreservingTB(env, width=16, depth=1, uniform_pb=False, kl_weight=0.1)
    assert op.pb is not None and not op.log_z_raw.requires_grad
    op.loss(op.sample(32, generator=torch.Generator().manual_seed(1))).backward()
    for name, p in op.named_parameters():
        if name == "log_z_raw":
            assert p.grad is None
        else:
            assert p.grad is not None and bool(p.grad.abs().sum() > 0), name
    # the KL term alone reaches P_B only, and is 0 for a uniform P_B
    op.zero_grad()
    tr = op.sample(16, generator=torch.Generator().manual_seed(2))
    op.backward_kl(tr).backward()
    assert all(p.grad is None or bool(p.grad.abs().sum() == 0) for p in op.pf.parameters())
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in op.pb.parameters())
    with torch.no_grad():
        op.pb[-1].weight.zero_()
        op.pb[-1].bias.zero_()
    assert op.backward_kl(tr).item() == pytest.approx(0.0, abs=1e-6)
    assert float(OrderPreservingTB(env, width=8, depth=1).backward_kl(tr)) == 0.0


def _share_and_precision(model, env, n, seed):
    with torch.no_grad():
        x = model.sample(n, generator=torch.Generator().manual_seed(seed)).terminal
    return pareto_share(env, x), float(env.mode_mask(x).double().mean())


def test_short_op_training_improves_pareto_share():
    torch.manual_seed(0)
    env = MultiObjectiveHyperGrid(ndim=2, height=32)
    op = OrderPreservingTB(env, width=64, depth=2, epsilon=0.01)
    share0, prec0 = _share_and_precision(op, env, 128, seed=123)
    opt = torch.optim.Adam([p for p in op.parameters() if p.requires_grad], lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        loss = op.loss(op.sample(64, generator=g, epsilon=0.01))
        opt.zero_grad()
        loss.backward()
        opt.step()
    share1, prec1 = _share_and_precision(op, env, 128, seed=123)
    assert share1 > share0 and prec1 > prec0 + 0.1, (share0, share1, prec0, prec1)


def _json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


TINY = "height=16 width=32 depth=1 batch_size=32"


def test_cli_round_trip(tmp_path, capsys):
    for name in ("hypergrid-moo-op", "hypergrid-moo-tb"):
        out = tmp_path / name
        assert main(["train", name, "--steps", "20", "--out", str(out), "--quiet", "--set", TINY]) == 0
        config = json.loads((out / "config.json").read_text())
        assert (config["height"], config["dim"], config["objectives"]) == (16, 2, "branin+currin")
        capsys.readouterr()
        assert main(["eval", str(out), "--metrics", "pareto,precision", "--n", "300"]) == 0
        res = _json(capsys)
        assert set(res) == {"pareto_share", "pareto_found", "n_front", "pareto_precision"}
        assert res["n_front"] == MultiObjectiveHyperGrid(2, 16).n_modes
        assert 0 < res["pareto_share"] <= 1 and 0 <= res["pareto_precision"] <= 1
        assert res["pareto_found"] == round(res["pareto_share"] * res["n_front"])
    assert main(["eval", str(out)]) == 0  # default metrics: both
    assert {"pareto_share", "pareto_precision"} <= set(_json(capsys))


def test_cli_errors_and_defaults(tmp_path, capsys):
    d_op, d_tb = get_recipe("hypergrid-moo-op").defaults, get_recipe("hypergrid-moo-tb").defaults
    shared = (
        "ndim",
        "height",
        "objectives",
        "width",
        "depth",
        "uniform_pb",
        "epsilon",
        "steps",
        "batch_size",
        "lr",
    )
    assert all(d_op[k] == d_tb[k] for k in shared)  # equal network, batch, lr and trajectories
    assert get_recipe("hypergrid-moo-op").kind == "gflownet"
    bad = ["train", "hypergrid-moo-op", "--steps", "1", "--quiet", "--out", str(tmp_path / "x")]
    assert main([*bad, "--set", "objectives=branin+rosenbrock"]) == 2
    assert "valid objectives: branin, currin, shubert, beale" in capsys.readouterr().err
    assert main([*bad, "--set", "beta=2"]) == 2  # a baseline-only key
    assert "unknown key 'beta'" in capsys.readouterr().err
