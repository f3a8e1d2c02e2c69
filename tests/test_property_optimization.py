"""Property optimisation of discrete flows: top-k AUC, the oracle, InVirtuoGen's PPO and GA, smiles-optimize."""

import json
import math

import pytest
import torch
from torch import nn

from flowforge.apps.molecules import (
    CrossoverPrompter,
    Oracle,
    brics_crossover,
    encode_prompts,
    load_reward,
    mutate,
    optimize,
    top_k_auc,
    top_k_mean,
)
from flowforge.data.molecules import rdkit_available
from flowforge.data.tokens import Vocabulary
from flowforge.discrete import DiscreteFlowMatching
from flowforge.finetune import (
    Corruption,
    DiscretePPO,
    clipped_surrogate,
    normalized_advantages,
    sequence_log_prob,
)
from flowforge.nn import TokenTransformer

needs_rdkit = pytest.mark.skipif(not rdkit_available(), reason="needs rdkit")


# -- top-k AUC -----------------------------------------------------------------------------------------------


def test_top_k_auc_hand_cases():
    assert top_k_auc([1.0] * 200, 10, 100, budget=200) == pytest.approx(0.75)
    # early stop after 100 calls of a 300 budget: 100 * (0 + 1) / 2 + 200 * 1
    assert top_k_auc([1.0] * 100, budget=300) == pytest.approx(250 / 300)
    # 0.5 x 100, 1.0 x 100, 0.0 x 50, budget 300: 25 + 75 + 50 + 50 (extension) = 200
    s = [0.5] * 100 + [1.0] * 100 + [0.0] * 50
    assert top_k_auc(s, budget=300) == pytest.approx(200 / 300)
    # calls past the budget do not count
    assert top_k_auc([1.0] * 200 + [5.0] * 10, budget=200) == pytest.approx(0.75)
    # top-10 uses the 10 best so far; fewer than 10: their mean
    s = [0.0] * 90 + [1.0] * 5 + [0.0] * 5
    assert top_k_auc(s, budget=100) == pytest.approx(0.5 * 0.5)
    assert top_k_mean([0.2, 0.4]) == pytest.approx(0.3)
    assert top_k_mean([]) == 0.0
    assert top_k_mean(list(range(20))) == pytest.approx(14.5)


def test_top_k_auc_bad_inputs():
    with pytest.raises(ValueError, match="budget"):
        top_k_auc([1.0], budget=0)
    with pytest.raises(ValueError, match="freq"):
        top_k_auc([1.0], freq=0, budget=10)


# -- oracle ----------------------------------------------------------------------------------------------------


@needs_rdkit
def test_oracle_counts_unique_canonical_molecules_and_caches():
    seen = []

    def reward(smiles):
        seen.append(list(smiles))
        return [float(len(s)) for s in smiles]

    o = Oracle(reward, budget=4)
    r = o.score(["CCO", "OCC", "not a smiles", "CCO", "CCN"])
    assert r.scores == [3.0, 3.0, None, 3.0, 3.0]
    assert r.new == [True, False, False, False, True]
    assert o.calls == 2 and seen == [["CCO", "CCN"]]
    r = o.score(["C(C)O", "CCCC", "c1ccccc1", "CCCCC"])  # cached, then 2 new; the third is past the budget
    assert r.scores == [3.0, 4.0, 8.0, None]
    assert o.calls == 4 and o.exhausted and seen[-1] == ["CCCC", "c1ccccc1"]
    assert o.scores == [3.0, 3.0, 4.0, 8.0] and o.smiles == ["CCO", "CCN", "CCCC", "c1ccccc1"]
    assert o(["OCC"]) == [3.0]  # repeats stay free after the budget
    assert o.calls == 4


def test_oracle_and_reward_bad_inputs():
    with pytest.raises(ValueError, match="budget"):
        Oracle("qed", budget=0)
    with pytest.raises(ValueError, match="unknown reward"):
        load_reward("qedd")
    with pytest.raises(ValueError, match="could not import"):
        load_reward("no_such_module_xyz:f")
    with pytest.raises(ValueError, match="no attribute"):
        load_reward("math:no_such_function")
    with pytest.raises(ValueError, match="does not exist"):
        load_reward("/no/such/file.py:f")
    assert load_reward("math:fsum") is math.fsum


@needs_rdkit
def test_oracle_rejects_bad_reward_output():
    with pytest.raises(ValueError, match="values for"):
        Oracle(lambda s: [1.0], budget=5)(["CCO", "CCN"])
    with pytest.raises(ValueError, match="finite"):
        Oracle(lambda s: [math.nan] * len(s), budget=5)(["CCO"])


# -- PPO -------------------------------------------------------------------------------------------------------


class ConstLogits(nn.Module):
    """A posterior that ignores x_t: one logit vector shared by every position."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(torch.as_tensor(logits, dtype=torch.float32))

    def forward(self, x, t):
        return self.logits.expand(*x.shape, -1)


def tiny_flow(v=5, length=4, seed=0):
    torch.manual_seed(seed)
    net = TokenTransformer(v, length, width=16, depth=1, heads=2)
    return DiscreteFlowMatching(net, v, source="uniform", length=length)


def test_surrogate_gradient_reaches_the_net():
    dfm = tiny_flow()
    x1 = torch.randint(1, 5, (6, 4), generator=torch.Generator().manual_seed(0))
    lp = sequence_log_prob(dfm, x1, 6, torch.Generator().manual_seed(1), pad_id=0)
    assert lp.shape == (6, 6) and bool((lp <= 0).all())
    lp.mean().backward()
    grads = [p.grad for p in dfm.parameters()]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_surrogate_counts_corrupted_positions_up_to_the_first_pad():
    dfm = DiscreteFlowMatching(ConstLogits([0.0, 1.0, 2.0]), 3, source="uniform", length=3)
    logp = torch.log_softmax(torch.tensor([0.0, 1.0, 2.0]), -1)
    x1 = torch.tensor([[2, 0, 1]])  # positions 0 (token 2) and 1 (the end pad) count, position 2 not
    lp = sequence_log_prob(dfm, x1, torch.tensor([0.0]), pad_id=0)  # t = 0: every position corrupted
    assert float(lp.detach()) == pytest.approx(float((logp[2] + logp[0]) / 2), abs=1e-6)


def test_clipped_objective_matches_hand_computation():
    new = ConstLogits([0.0, 1.0, 0.0])
    old = ConstLogits([0.0, 0.0, 0.0])
    dfm = DiscreteFlowMatching(new, 3, source="uniform", length=2)
    ppo = DiscretePPO(dfm, clip_eps=0.2, num_timesteps=1)
    ppo.old = DiscreteFlowMatching(old, 3, source="uniform", length=2)
    x1 = torch.tensor([[1, 2], [1, 1]])
    c = Corruption(
        x_t=torch.zeros(2, 2, dtype=torch.long),
        t=torch.tensor([0.5, 0.0]),
        mask=torch.tensor([[1.0, 0.0], [1.0, 1.0]]),
        rows=torch.tensor([0, 1]),
    )
    adv = torch.tensor([1.0, -1.0])
    # by hand: log p_new(1) = 1 - log(e + 2); log p_old = -log 3 for every token
    lp_new = 1 - math.log(math.e + 2)
    lp_old = -math.log(3)
    ratio = math.exp(lp_new - lp_old)  # ~1.728 > 1.2: the positive advantage is clipped
    a0 = 1.0 / (1 - 0.25)
    a1 = -1.0
    term0 = min(ratio * a0, 1.2 * a0)
    term1 = min(ratio * a1, 1.2 * a1)
    expected = -(term0 + term1) / 2
    with torch.no_grad():
        logp_old = torch.full((2,), lp_old)
    got = ppo.loss(x1, adv, c, logp_old)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    # the function alone
    assert float(clipped_surrogate(torch.log(torch.tensor([1.5])), torch.zeros(1), torch.tensor([-2.0]))) == (
        pytest.approx(3.0)
    )


def test_advantages_normalised_and_negative_scaled():
    a = normalized_advantages(torch.tensor([1.0, 2.0, 3.0, 6.0]), c_neg=0.5)
    raw = (torch.tensor([1.0, 2.0, 3.0, 6.0]) - 3.0) / torch.tensor([1.0, 2.0, 3.0, 6.0]).std()
    assert torch.allclose(a, torch.where(raw < 0, 0.5 * raw, raw), atol=1e-6)
    assert normalized_advantages(torch.tensor([2.0])).tolist() == [0.0]


def test_ppo_raises_a_toy_reward():
    """Length-1 sequences over 4 tokens, reward 'token == 2': a few PPO rounds raise p(2)."""
    dfm = DiscreteFlowMatching(ConstLogits([0.0, 0.0, 0.0, 0.0]), 4, source="uniform", length=1)
    ppo = DiscretePPO(dfm, lr=0.05, num_timesteps=4, minibatch=64)
    g = torch.Generator().manual_seed(0)
    p_before = float(torch.softmax(dfm.net.logits.detach(), -1)[2])
    for _ in range(6):
        with torch.no_grad():
            probs = torch.softmax(dfm.net.logits, -1)
        x1 = torch.multinomial(probs, 64, replacement=True, generator=g)[:, None]
        reward = (x1[:, 0] == 2).float()
        for _ in range(2):
            ppo.step(x1, reward, g)
        ppo.refresh()
    p_after = float(torch.softmax(dfm.net.logits.detach(), -1)[2])
    assert p_after > p_before + 0.2, (p_before, p_after)


# -- GA operators ------------------------------------------------------------------------------------------------

PARENTS = ["CCOC(=O)c1ccccc1", "CN1CCC(Nc2ccccc2)CC1", "CC(=O)Nc1ccc(O)cc1", "O=C(O)c1ccccc1OC(C)=O", "CCCCN"]


@needs_rdkit
def test_ga_operators_give_valid_smiles():
    from rdkit import Chem

    g = torch.Generator().manual_seed(0)
    children = [brics_crossover(a, b, g) for a in PARENTS for b in PARENTS]
    assert sum(c is not None for c in children) >= 20
    mutants = [mutate(p, g) for p in PARENTS for _ in range(4)]
    assert all(m is not None for m in mutants)
    for s in [c for c in children if c] + mutants:
        assert Chem.MolFromSmiles(s) is not None, s
    assert mutate("not a smiles", g) is None
    assert brics_crossover("c1ccccc1", "c1ccccc1", g) is None  # nothing to cut


@needs_rdkit
def test_prompter_vocabulary_rule_and_weights():
    p = CrossoverPrompter(size=2)
    p.update(["CCCCCCO"], [0.5])
    assert p.update(["CCCCCCCO"], [0.4]) == 0  # similar (> 0.3) and worse: rejected
    assert p.update(["CCCCCCCO"], [0.9]) == 1  # similar and better: replaces it
    assert [s for s, _ in p.entries] == ["CCCCCCCO"]
    p.update(["c1ccc2ccccc2c1", "N#Cc1ccncc1"], [0.1, 0.3])  # dissimilar: fill, then replace the worst
    assert [round(v, 1) for _, v in p.entries] == [0.9, 0.3]
    w = p.weights()
    expected = torch.tensor([1 / (2e-3), 1 / (2e-3 + 1)], dtype=torch.float64)
    assert torch.allclose(w, expected / expected.sum())
    pairs = p.parents(5, torch.Generator().manual_seed(0))
    assert all(a != b for a, b in pairs)


def test_encode_prompts_keeps_noise_for_unencodable_rows():
    v = Vocabulary(["C", "O"])
    x0, k = encode_prompts(["CO", None, "CN", "CCCCCC"], v, 4, torch.full((4, 4), 7))
    assert k == 2
    assert x0.tolist() == [[1, 2, 0, 0], [7, 7, 7, 7], [7, 7, 7, 7], [1, 1, 1, 1]]


# -- the loop and the recipe -----------------------------------------------------------------------------------


def test_optimize_bad_inputs():
    dfm, v = tiny_flow(), Vocabulary(["C", "O", "N", "c"])
    with pytest.raises(ValueError, match="unknown mode"):
        optimize(dfm, v, "qed", budget=10, mode="evolve")
    with pytest.raises(ValueError, match="contradicts"):
        optimize(dfm, v, "qed", budget=10, mode="sample", use_ppo=True)
    with pytest.raises(ValueError, match="budget"):
        optimize(dfm, v, "qed", budget=0)
    with pytest.raises(ValueError, match="give budget"):
        optimize(dfm, v, "qed")
    with pytest.raises(ValueError, match="budget=5 but"):
        optimize(dfm, v, Oracle("qed", budget=10), budget=5)


SMALL = {"population": 32, "offspring": 32, "mutations": 8, "ppo_batch": 32, "reinforce_steps": 1,
         "num_timesteps": 2, "sample_steps": 8, "budget": 100}  # fmt: skip


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    if not rdkit_available():
        pytest.skip("needs rdkit")
    from flowforge.recipes import train_recipe

    out = tmp_path_factory.mktemp("opt") / "base"
    over = {"width": 32, "depth": 1, "heads": 2, "batch_size": 32, "max_length": 40, "warmup": 5}
    with pytest.warns(UserWarning, match="dropped"):
        train_recipe("smiles-uniform", overrides=over, steps=30, out=out, progress=False)
    return out


def _weights(run):
    from flowforge.recipes.runs import load_run

    model, _ = load_run(run)
    flow = getattr(model, "flow", model)
    return {k: v.clone() for k, v in flow.state_dict().items()}


def test_recipe_end_to_end_and_reproducible(base_run):
    from flowforge.recipes import train_recipe
    from flowforge.recipes.runs import evaluate

    root = base_run.parent
    runs = {}
    for name, mode in (("a", "ga+ppo"), ("b", "ga+ppo"), ("c", "ga")):
        runs[name] = root / name
        train_recipe(
            "smiles-optimize",
            overrides={**SMALL, "init_from": str(base_run), "mode": mode},
            out=runs[name],
            progress=False,
        )
    res = evaluate(runs["a"])
    assert set(res) == {"top10_auc", "top10_mean", "validity", "oracle_calls"}
    assert (
        res["oracle_calls"] <= 100 and 0 <= res["validity"] <= 1 and 0 < res["top10_auc"] <= res["top10_mean"]
    )
    hist = json.loads((runs["a"] / "optimization.json").read_text())
    assert len(hist["scores"]) == res["oracle_calls"] and hist["top10_auc"] == pytest.approx(res["top10_auc"])
    assert hist["ppo_updates"] > 0
    assert json.loads((runs["b"] / "optimization.json").read_text())["scores"] == hist["scores"]
    base, a, b, c = (_weights(r) for r in (base_run, runs["a"], runs["b"], runs["c"]))
    assert any(not torch.equal(base[k], a[k]) for k in base)  # PPO changed the flow
    assert all(torch.equal(a[k], b[k]) for k in a)  # same seed, same weights
    assert all(torch.equal(base[k], c[k]) for k in base)  # GA alone leaves the flow as it was


def test_optimize_sample_mode_has_no_updates(base_run):
    from flowforge.recipes.discrete import vocabulary
    from flowforge.recipes.runs import load_run

    model, config = load_run(base_run)
    h = optimize(
        model, vocabulary(config), "qed", budget=40, mode="sample", population=32, offspring=32, steps=8
    )
    assert h.ppo_updates == 0 and h.oracle_calls <= 40 and h.generated >= 32
    assert h.stopped in ("budget", "stalled")


def test_recipe_bad_inputs(base_run, tmp_path):
    from flowforge.recipes import train_recipe

    def run(**over):
        train_recipe("smiles-optimize", overrides={**SMALL, **over}, out=tmp_path / "x", progress=False)

    with pytest.raises(ValueError, match="init_from=RUN_DIR"):
        run()
    with pytest.raises(FileNotFoundError, match="no run folder"):
        run(init_from=str(tmp_path / "nothing"))
    with pytest.raises(ValueError, match="budget must be"):
        run(init_from=str(base_run), budget=0)
    with pytest.raises(ValueError, match="unknown mode"):
        run(init_from=str(base_run), mode="evolve")
    with pytest.raises(ValueError, match="could not import"):
        run(init_from=str(base_run), reward="no_such_module_xyz:score")
    with pytest.raises(ValueError, match="one trainer step"):
        train_recipe(
            "smiles-optimize", overrides={**SMALL, "init_from": str(base_run)}, steps=5, out=tmp_path / "y",
            progress=False,
        )  # fmt: skip


def test_graph_ga_mode_scores_children_without_the_flow(base_run):
    """graph-ga: the flow draws the first population only; then every call is a crossover child or a mutant."""
    from flowforge.recipes.discrete import vocabulary
    from flowforge.recipes.runs import load_run

    model, config = load_run(base_run)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    h = optimize(
        model, vocabulary(config), "qed", budget=80, mode="graph-ga", population=32, offspring=32, steps=8,
        mutations=8,
    )  # fmt: skip
    assert h.generated == 32 and h.ppo_updates == 0  # the flow ran once
    assert h.oracle_calls > h.valid  # later calls came from the GA
    assert h.rounds >= 1 and h.stopped in ("budget", "stalled")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
