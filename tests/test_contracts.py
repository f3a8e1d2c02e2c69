"""Every implementation against the contracts of ``core/contracts.py`` (DESIGN.md, "The few contracts")."""

from __future__ import annotations

import inspect

import pytest
import torch

import flowforge as ff
from flowforge import gflownet as gfn
from flowforge.core.contracts import Bijection, Energy, Environment, Generator, Objective
from flowforge.data import energies as E
from flowforge.normalizing import Flow, ReverseKL, SelfImprovement
from flowforge.recipes import get_recipe, resolve_config
from flowforge.recipes.gflownet import build_gflownet, objectives

ENERGIES = [
    GMM := E.GMM40(),
    E.ManyWell(4),
    E.DoubleWell4(),
    E.LennardJones13(),
    E.user_energy("flowforge.data.energies:_example_energy", dim=2),
]


def _small_objectives():
    for name, (cls, _, _) in objectives().items():
        if name == "optb":  # needs a multi-objective grid
            yield name, gfn.OrderPreservingTB(gfn.MultiObjectiveHyperGrid(height=4), width=8, depth=1)
            continue
        config = resolve_config(get_recipe("hypergrid-tb"), {"objective": name, "width": 8, "depth": 1})
        model = build_gflownet({**config, "ndim": 2, "height": 4})
        assert type(model) is cls
        yield name, model


GFN = list(_small_objectives())


def _generators():
    fm = ff.FlowMatching(ff.nn.MLP(2, 16, 1))
    yield "FlowGenerator", fm.generator()
    yield "NSF", ff.NSF(2, transforms=1, hidden=(8,))
    yield "TARFlow", ff.TARFlow(dim=2, blocks=1, width=16)
    yield "GFlowNetGenerator", GFN[0][1].generator()
    yield (
        "RiemannianGenerator",
        ff.RiemannianFlowMatching(ff.nn.MLP(3, 16, 1), ff.manifolds.Sphere(2)).generator(),
    )


@pytest.mark.parametrize(("name", "gen"), list(_generators()), ids=lambda v: v if isinstance(v, str) else "")
def test_generators_sample_n_points(name, gen):
    assert isinstance(gen, Generator)
    x = gen.sample(3, generator=torch.Generator().manual_seed(0))
    assert x.shape[0] == 3


@pytest.mark.parametrize(("name", "model"), GFN, ids=[n for n, _ in GFN])
def test_every_gflownet_objective_is_an_objective_that_makes_its_own_batches(name, model):
    assert isinstance(model, Objective) and model.makes_own_batches
    loss = model.loss(ff.train.BatchRequest(4, torch.Generator().manual_seed(0), torch.device("cpu")))
    assert loss.shape == () and torch.isfinite(loss)


def test_continuous_and_normalizing_objectives_train_on_data():
    for model in (ff.FlowMatching(ff.nn.MLP(2, 16, 1)), ff.NSF(2, transforms=1, hidden=(8,))):
        assert isinstance(model, Objective) and not getattr(model, "makes_own_batches", False)
        assert model.loss(torch.randn(8, 2)).shape == ()
    flow = ff.NSF(2, transforms=1, hidden=(8,))
    assert ReverseKL(flow, GMM).makes_own_batches and SelfImprovement.makes_own_batches


def test_every_exported_bijection_is_a_bijection():
    import flowforge.normalizing as N

    layers = [
        c
        for n in N.__all__
        if inspect.isclass(c := getattr(N, n)) and issubclass(c, torch.nn.Module) and hasattr(c, "inverse")
    ]
    assert len(layers) >= 10
    x = torch.randn(4, 2)
    for layer in (N.AffineCoupling(2), N.SplineCoupling(2), N.MaskedAutoregressive(2), N.ActNorm(2)):
        assert isinstance(layer, Bijection)
        z, ladj = layer(x)
        assert ladj.shape == (4,)
    assert issubclass(ff.NSF, Flow)


@pytest.mark.parametrize("energy", ENERGIES, ids=lambda e: type(e).__name__)
def test_every_energy_is_an_energy(energy):
    assert isinstance(energy, Energy)
    assert energy.energy(torch.randn(3, energy.dim)).shape == (3,)


def test_every_environment_is_an_environment():
    envs = [
        gfn.HyperGrid(2, 4),
        gfn.BitSequence(4, 2),
        gfn.NonAutoregressiveBitSequence(4, 2),
        gfn.SetGeneration(6, 3),
        gfn.Ising(2),
        gfn.MultiObjectiveHyperGrid(height=4),
    ]
    for env in envs:
        assert isinstance(env, Environment), type(env).__name__
        s = env.s0.expand(2, -1)
        assert env.forward_mask(s).shape == (2, env.n_actions)
        assert env.obs(s).shape == (2, env.obs_dim)
