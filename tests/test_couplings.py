"""Couplings: OT plans are optimal and carry conditions; the Schrodinger bridge uses its entropic plan."""

import itertools

import pytest
import torch

from flowforge.core.couplings import Independent, MinibatchOT, SchrodingerBridge, ot_plan

pytest.importorskip("ot")


def _cost(x0, x1, i, j):
    return float(((x0[i] - x1[j]) ** 2).sum(1).mean())


def test_exact_ot_is_the_optimal_permutation():
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(6, 2, generator=g), torch.randn(6, 2, generator=g) + 1
    i, j = MinibatchOT("exact")(x0, x1)
    assert sorted(j.tolist()) == list(range(6)), "exact OT on equal batches is a permutation (no duplicates)"
    best = min(_cost(x0, x1, torch.arange(6), torch.tensor(p)) for p in itertools.permutations(range(6)))
    assert _cost(x0, x1, i, j) == pytest.approx(best, rel=1e-9)


def test_sinkhorn_plan_tends_to_exact_as_reg_shrinks():
    g = torch.Generator().manual_seed(1)
    x0, x1 = torch.randn(32, 2, generator=g), torch.randn(32, 2, generator=g) * 2
    exact = ot_plan(x0, x1, method="exact")
    cost = torch.cdist(x0.double(), x1.double()) ** 2
    costs = [float((ot_plan(x0, x1, method="sinkhorn", reg=r) * cost).sum()) for r in (1.0, 0.1, 0.01)]
    assert costs[0] > costs[1] > costs[2] >= float((exact * cost).sum()) - 1e-9
    assert costs[2] - float((exact * cost).sum()) < 0.05 * float((exact * cost).sum())


def test_ot_lowers_transport_cost_and_keeps_labels_attached():
    g = torch.Generator().manual_seed(2)
    # N(0, I) -> N(0, 4I) in 2-D: independent cost E|x0 - x1|^2 = 10, optimal W2^2 = 2
    x0, x1 = torch.randn(256, 2, generator=g), 2 * torch.randn(256, 2, generator=g)
    labels = torch.arange(256)
    ind = _cost(x0, x1, *Independent()(x0, x1))
    i, j = MinibatchOT()(x0, x1)
    assert ind == pytest.approx(10.0, rel=0.15)
    assert _cost(x0, x1, i, j) < 0.4 * ind
    assert torch.equal(labels[j], j), "conditions must follow the data index"


def test_schrodinger_bridge_between_independent_and_ot():
    g = torch.Generator().manual_seed(3)
    x0, x1 = torch.randn(128, 2, generator=g), torch.randn(128, 2, generator=g) + 2
    ind = _cost(x0, x1, *Independent()(x0, x1))
    ot = _cost(x0, x1, *MinibatchOT()(x0, x1))
    small = _cost(x0, x1, *SchrodingerBridge(0.1)(x0, x1, generator=torch.Generator().manual_seed(0)))
    large = _cost(x0, x1, *SchrodingerBridge(5.0)(x0, x1, generator=torch.Generator().manual_seed(0)))
    assert small < 1.05 * ot and small < large
    assert large == pytest.approx(ind, rel=0.25)
    sb = SchrodingerBridge(0.5)
    assert sb.path.gamma.a == pytest.approx(0.25)
    with pytest.raises(ValueError, match="sigma > 0"):
        SchrodingerBridge(0.0)
