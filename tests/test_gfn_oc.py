"""Outcome-conditioned GFlowNets (OC-GFN): exact conversion, amortised conversion, training, recipe."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

import flowforge.recipes.gflownet_oc  # noqa: F401  (registers bitseq-ocgfn)
from flowforge.cli import main
from flowforge.gflownet import TrajectoryBalance
from flowforge.gflownet.envs import BitSequence, HyperGrid
from flowforge.gflownet.exact import exact_flows, l1_sum, terminal_distribution
from flowforge.gflownet.outcome import (
    AmortizedConversion,
    OutcomeConditionedGFlowNet,
    OutcomeFineTuning,
    complete_states,
    distill_policy,
    exact_conversion,
    exact_log_z,
)

NEG = float("-inf")


@pytest.fixture
def f64():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def _prefix(env, states, outcomes):
    """(B,) bool: ``states`` is a prefix of ``outcomes``."""
    k = env.level(states)
    pos = torch.arange(env.n_words)[None]
    return ((states == outcomes) | (pos >= k[:, None])).all(1)


class OracleOC(OutcomeConditionedGFlowNet):
    """The closed-form optimum of the floored objective (``eps=None``: the exact, R = 1[x=y] one)."""

    def __init__(self, env, eps=None, **kw):
        super().__init__(env, width=4, depth=1, log_floor=math.log(eps) if eps else -20.0, **kw)
        self.eps = eps

    def _log_f(self, states, outcomes):
        env = self.env
        p = _prefix(env, states, outcomes).double()
        if self.eps is None:
            return torch.where(p > 0, 0.0, NEG)
        n_ext = float(env.vocab) ** (env.n_words - env.level(states)).double()
        return (p + self.eps * (n_ext - p)).log()

    def _out(self, states, outcomes):
        env = self.env
        self._check_outcomes(outcomes)
        B = states.shape[0]
        logits = torch.full((B, env.n_actions), NEG, dtype=torch.float64)
        lf = self._log_f(states, outcomes)
        full = env.forward_mask(states)[:, -1]
        logits[full, -1] = 0.0
        for a in range(env.vocab):
            go = ~full
            child = env.step(states[go], torch.full((int(go.sum()),), a))
            lf_child = self._log_f(child, outcomes[go])
            logits[go, a] = torch.where(lf[go] > NEG, lf_child - lf[go], 0.0)  # F(s|y) = 0: any P_F
        return torch.cat([logits, lf[:, None]], 1)


class OracleConversion(AmortizedConversion):
    """N and Q set to their exact values: N(a|s) = sum_{y >= s+a} R(y), Q = downstream optimal policy."""

    def __init__(self, model, env):
        super().__init__(model, env, width=4, depth=1)
        self.log_f, self.log_pf = exact_flows(env)

    def log_numerator(self, states):
        env = self.env
        out = torch.zeros(states.shape[0], env.n_actions, dtype=torch.float64)
        full = env.forward_mask(states)[:, -1]
        for a in range(env.vocab):
            go = ~full
            child = env.step(states[go], torch.full((int(go.sum()),), a))
            out[go, a] = self.log_f[env.state_index(child)]
        return out

    def _q_logits(self, partial, ctx):
        return self.log_pf[self.env.state_index(partial)]


def test_oracle_floored_model_has_zero_db_residuals_and_known_success(f64):
    env = BitSequence(length=6, word=2)
    eps = 1e-3
    oc = OracleOC(env, eps=eps)
    g = torch.Generator().manual_seed(0)
    y, tr = oc.rollout(64, generator=g, epsilon=0.5)  # mostly failed trajectories: log R = log eps
    assert bool((tr.terminal != y).any(1).any())
    assert oc.residuals(tr, y).abs().max() < 1e-12
    assert oc.residuals(tr, tr.terminal).abs().max() < 1e-12  # hindsight-relabelled positives
    assert oc.success_rate() == pytest.approx(1 / (1 + eps * (2**6 - 1)), rel=1e-12)


def test_exact_conversion_of_perfect_model_is_r_over_z(f64):
    env = BitSequence(length=6, word=2, modes=3, beta=1.5, seed=4)
    oc = OracleOC(env)
    assert oc.success_rate() == pytest.approx(1.0, abs=1e-12)
    y = complete_states(env)
    lr = env.log_reward(y, torch.float64)
    table = exact_conversion(oc, lr, chunk=500)
    assert table.shape == (env.n_states, env.n_actions)
    mask = env.forward_mask(env.all_states())
    assert bool((table[~mask] == NEG).all()) and torch.allclose(table.exp().sum(1), torch.ones(env.n_states))
    p = terminal_distribution(lambda s: table[env.state_index(s)], env)
    assert float(l1_sum(p, env.true_distribution())) < 1e-12
    assert float(exact_log_z(oc, lr)) == pytest.approx(env.log_partition, abs=1e-12)
    # several rewards at once give the same tables
    env2 = BitSequence(length=6, word=2, modes=1, beta=3.0, seed=9)
    both = exact_conversion(oc, torch.stack([lr, env2.log_reward(y, torch.float64)]))
    assert both.shape == (2, env.n_states, env.n_actions) and torch.equal(both[0], table)
    p2 = terminal_distribution(lambda s: both[1][env.state_index(s)], env2)
    assert float(l1_sum(p2, env2.true_distribution())) < 1e-12


def test_floored_model_conversion_error_is_of_order_eps(f64):
    env = BitSequence(length=6, word=2, modes=2, beta=1.0, seed=1)
    lr = env.log_reward(complete_states(env), torch.float64)
    errs = []
    for eps in (1e-4, 1e-6):
        table = exact_conversion(OracleOC(env, eps=eps), lr)
        p = terminal_distribution(lambda s, t=table: t[env.state_index(s)], env)
        errs.append(float(l1_sum(p, env.true_distribution())))
    assert errs[1] < 1e-3 and errs[1] < errs[0] / 50


def test_amortized_loss_is_zero_at_exact_solution_and_policy_matches(f64):
    env = BitSequence(length=6, word=2, modes=3, beta=2.0, seed=2)
    conv = OracleConversion(OracleOC(env), env)
    res = conv.residuals(32, torch.Generator().manual_seed(0))
    assert res.shape == (2 * 32 * env.n_words,) and res.abs().max() < 1e-10
    assert conv.loss(SimpleNamespace(size=8, generator=torch.Generator().manual_seed(1))) < 1e-20
    assert float(conv.log_z()) == pytest.approx(env.log_partition, abs=1e-12)
    p = terminal_distribution(conv, env)
    assert float(l1_sum(p, env.true_distribution())) < 1e-12
    # Q only proposes outcomes that extend s' = s + a
    s = env.step(env.s0[None].expand(5, -1), torch.tensor([0, 1, 2, 3, 3]))
    a = torch.tensor([1, 1, 0, 2, 3])
    y, lq = conv.sample_outcomes(s, a, torch.Generator().manual_seed(2))
    assert bool((y[:, :2] == torch.stack([s[:, 0], a], 1)).all()) and bool(lq.isfinite().all())
    assert conv.log_q(s, a, torch.zeros(5, 3, dtype=torch.long)).eq(NEG).sum() >= 3


def test_trained_conversion_against_exact_marginal():
    torch.manual_seed(0)
    pre = BitSequence(length=4, word=2)
    oc = OutcomeConditionedGFlowNet(pre, width=64, depth=2, log_floor=-12.0)
    opt = torch.optim.Adam(oc.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    first = oc.success_rate()
    for _ in range(600):
        loss = oc.loss(SimpleNamespace(size=32, generator=g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first < 0.3 < 0.97 < oc.success_rate()
    env = BitSequence(length=4, word=2, modes=2, beta=2.0, seed=3)
    table = exact_conversion(oc, env.log_reward(complete_states(env), torch.float64))
    p_exact = terminal_distribution(lambda s: table[env.state_index(s)], env)
    assert float(l1_sum(p_exact, env.true_distribution())) < 0.15
    conv = AmortizedConversion(oc, env, width=64, depth=2)
    assert not any(q.requires_grad for q in conv.model.parameters())  # a frozen copy
    assert all(q.requires_grad for q in oc.parameters())  # the caller's model is left trainable
    opt = torch.optim.Adam([q for q in conv.parameters() if q.requires_grad], lr=3e-3)
    for _ in range(300):
        loss = conv.loss(SimpleNamespace(size=16, generator=g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    p_amort = terminal_distribution(conv, env)
    assert float(l1_sum(p_amort, p_exact)) < 0.1  # the amortised policy approaches the exact marginal
    tb = conv.to_trajectory_balance()
    assert isinstance(tb, TrajectoryBalance) and tb.pb is None
    assert tb.log_z.item() == pytest.approx(conv.log_z().item(), abs=1e-4)
    assert torch.allclose(terminal_distribution(tb, env), p_amort.to(torch.float64), atol=1e-6)
    d = distill_policy(env, table, log_z=1.0, width=32, depth=1, steps=300, lr=1e-2)
    assert float(l1_sum(terminal_distribution(d, env), p_exact)) < 0.1
    assert d.log_z.item() == pytest.approx(1.0)


def test_finetuning_module_switches_to_tb():
    env = BitSequence(length=4, word=2, modes=2)
    ft = OutcomeFineTuning(
        OutcomeConditionedGFlowNet(env, width=8, depth=1), env, convert_steps=2, width=8, depth=1
    )
    assert ft.tb.pf is ft.conversion.numerator
    b = SimpleNamespace(size=4, generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        ft.loss(b)
    assert int(ft.step) == 3 and ft.log_z.item() == pytest.approx(ft.conversion.log_z().item(), abs=1e-5)
    assert ft.generator().sample(3, generator=torch.Generator().manual_seed(0)).shape == (3, 2)


def test_bad_inputs_are_clear_errors():
    env = BitSequence(length=4, word=2)
    with pytest.raises(TypeError, match="BitSequence"):
        OutcomeConditionedGFlowNet(HyperGrid(2, 4))
    with pytest.raises(ValueError, match="log_floor"):
        OutcomeConditionedGFlowNet(env, log_floor=1.0)
    oc = OutcomeConditionedGFlowNet(env, width=8, depth=1)
    with pytest.raises(ValueError, match="outcomes must be"):
        oc.forward_log_probs(env.s0[None], torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="complete"):
        oc.log_flow(env.s0[None], env.s0[None])
    with pytest.raises(ValueError, match="one per state"):
        oc.log_flow(env.s0[None].expand(2, -1), torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="pass the"):
        oc.loss(oc.rollout(2)[1])
    with pytest.raises(ValueError, match="must have the pre-trained"):
        AmortizedConversion(oc, BitSequence(length=6, word=2))
    with pytest.raises(ValueError, match="one value per outcome"):
        exact_conversion(oc, torch.zeros(5))


def _json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_cli_pretrain_finetune_eval_round_trip(tmp_path, capsys):
    tiny = "length=4 word=2 width=32 depth=1"
    pre, ft, sc = tmp_path / "pre", tmp_path / "ft", tmp_path / "sc"
    assert main(["train", "bitseq-ocgfn", "--steps", "150", "--out", str(pre), "--quiet", "--set", tiny]) == 0
    cfg = json.loads((pre / "config.json").read_text())
    assert (cfg["stage"], cfg["batch_size"], cfg["dim"]) == ("pretrain", 64, 2)
    capsys.readouterr()
    assert main(["eval", str(pre)]) == 0
    res = _json(capsys)
    assert set(res) == {"success", "success_sampled"} and 0 <= res["success"] <= 1
    sets = f"{tiny} stage=finetune init_from={pre} convert_steps=20 modes_seed=5"
    assert main(["train", "bitseq-ocgfn", "--steps", "40", "--out", str(ft), "--quiet", "--set", sets]) == 0
    capsys.readouterr()
    assert main(["eval", str(ft), "--n", "500"]) == 0
    res = _json(capsys)
    assert set(res) == {"l1_sum", "l1_mean", "jsd", "logz_error", "modes_found", "n_modes"}
    assert (
        0 <= res["l1_sum"] <= 2
        and res["n_modes"] == 4
        and res["l1_mean"] == pytest.approx(res["l1_sum"] / 21)
    )
    sets = f"{tiny} stage=scratch modes_seed=5"
    assert main(["train", "bitseq-ocgfn", "--steps", "20", "--out", str(sc), "--quiet", "--set", sets]) == 0
    capsys.readouterr()
    assert main(["eval", str(sc), "--metrics", "l1,logz"]) == 0
    assert set(_json(capsys)) == {"l1_sum", "l1_mean", "logz_error"}
    # errors: finetune without a pre-trained run, mismatched architecture, unknown stage
    assert main(["train", "bitseq-ocgfn", "--steps", "1", "--quiet", "--set", f"{tiny} stage=finetune"]) == 2
    assert "init_from=RUN_DIR" in capsys.readouterr().err
    bad = f"length=4 word=2 width=16 depth=1 stage=finetune init_from={pre}"
    assert main(["train", "bitseq-ocgfn", "--steps", "1", "--quiet", "--set", bad]) == 2
    assert "width=32" in capsys.readouterr().err
    assert main(["train", "bitseq-ocgfn", "--steps", "1", "--quiet", "--set", "stage=tune"]) == 2
    assert "unknown stage" in capsys.readouterr().err
