"""The layout of ``flowforge.normalizing``: one method a file, a table that says where each name lives,
named flows as classes, every layer a :class:`~flowforge.core.contracts.Bijection`."""

from __future__ import annotations

import inspect
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

import flowforge
import flowforge.normalizing as nf
from flowforge.core.contracts import Bijection

PACKAGE = Path(flowforge.__file__).resolve().parent
ROW = re.compile(r"^``([\w/]+\.py)``\s+(.*)$")


def table() -> dict[str, str]:
    """``name -> file`` (relative to the flowforge package) from the ``flowforge.normalizing`` docstring."""
    out: dict[str, str] = {}
    for line in (nf.__doc__ or "").splitlines():
        m = ROW.match(line.strip())
        if m:
            for name in re.findall(r"``(\w+)``", m.group(2)):
                assert name not in out, f"{name} is listed twice in the table"
                out[name] = m.group(1)
    return out


def defining_file(name: str) -> Path | None:
    """Where ``flowforge.normalizing.<name>`` is defined (``None`` for a plain value such as a float)."""
    obj = getattr(nf, name)
    if isinstance(obj, types.ModuleType):
        return Path(obj.__file__).resolve()
    module = getattr(obj, "__module__", None)
    if (inspect.isclass(obj) or inspect.isfunction(obj)) and module in sys.modules:
        return Path(sys.modules[module].__file__).resolve()
    return None


def test_table_names_an_existing_file_for_every_exported_name():
    rows = table()
    assert set(rows) == set(nf.__all__), (
        f"not in the table: {sorted(set(nf.__all__) - set(rows))}; "
        f"in the table but not exported: {sorted(set(rows) - set(nf.__all__))}"
    )
    for name, rel in rows.items():
        path = PACKAGE / rel
        assert path.is_file(), f"{name}: the table names {rel}, which does not exist"
        where = defining_file(name)
        if where is not None:
            assert where == path.resolve(), f"{name} is defined in {where}, the table says {rel}"
        else:  # a constant: assigned at the top level of its file
            assert re.search(rf"^{name}\b[^=\n]*=", path.read_text(), flags=re.M), f"{name} not set in {rel}"


@pytest.mark.parametrize("name", ["NSF", "MAF", "RealNVP", "NAF", "UNAF"])
def test_named_flows_are_flow_classes(name):
    cls = getattr(nf, name)
    assert inspect.isclass(cls) and issubclass(cls, nf.Flow), (
        f"{name} must be a Flow subclass, not a function"
    )
    assert flowforge.NSF is nf.NSF
    flow = cls(3, transforms=2, hidden=(8,), context=2)
    assert isinstance(flow, nf.Flow) and isinstance(flow, Bijection)
    assert (flow.dim, flow.transforms, flow.hidden, flow.context, flow.num_classes) == (3, 2, (8,), 2, None)
    assert re.search(r"\(\D*(19|20)\d\d\)|, (19|20)\d\d\)", cls.__doc__ or ""), (
        f"{name}'s docstring cites no paper"
    )
    # the parameters sit where a plain Flow of the same layers keeps them (old checkpoints load)
    plain = nf.Flow(list(flow.transform.bijections), event_shape=(3,))
    assert list(flow.state_dict()) == list(plain.state_dict())
    assert all(k.startswith("transform.bijections.") for k in flow.state_dict())


def test_named_flow_defaults_are_unchanged():
    nsf = nf.NSF(2)
    assert (nsf.transforms, nsf.hidden, nsf.bins, nsf.bound, nsf.coupling) == (5, (64, 64), 8, 5.0, False)
    assert all(isinstance(b, nf.SplineAutoregressive) for b in nsf.transform.bijections)
    assert isinstance(nf.NSF(2, coupling=True).transform.bijections[0], nf.SplineCoupling)
    maf, rnvp = nf.MAF(2), nf.RealNVP(2)
    assert (maf.transforms, maf.hidden, rnvp.transforms, rnvp.hidden) == (5, (64, 64), 4, (64, 64))
    assert all(isinstance(b, nf.MaskedAutoregressive) for b in maf.transform.bijections)
    assert all(isinstance(b, nf.AffineCoupling) for b in rnvp.transform.bijections)


LAYERS = {
    "AffineCoupling": lambda: nf.AffineCoupling(3, (8,)),
    "SplineCoupling": lambda: nf.SplineCoupling(3, (8,)),
    "MaskedAutoregressive": lambda: nf.MaskedAutoregressive(3, (8,)),
    "SplineAutoregressive": lambda: nf.SplineAutoregressive(3, (8,)),
    "Permutation": lambda: nf.Permutation([2, 0, 1]),
    "RandomPermutation": lambda: nf.RandomPermutation(3, seed=0),
    "Reverse": lambda: nf.Reverse(),
    "ActNorm": lambda: nf.ActNorm(3),
    "LULinear": lambda: nf.LULinear(3),
    "Affine": lambda: nf.Affine(torch.zeros(3), torch.ones(3)),
    "Compose": lambda: nf.Compose([nf.Reverse(), nf.ActNorm(3)]),
    "Flow": lambda: nf.Flow([nf.ActNorm(3)], event_shape=(3,)),
    "NSF": lambda: nf.NSF(3, transforms=1, hidden=(8,)),
    "MAF": lambda: nf.MAF(3, transforms=1, hidden=(8,)),
    "RealNVP": lambda: nf.RealNVP(3, transforms=2, hidden=(8,)),
    "NeuralAutoregressive": lambda: nf.NeuralAutoregressive(3, (8,), components=4),
    "UnconstrainedAutoregressive": lambda: nf.UnconstrainedAutoregressive(3, (8,), integrand=(8,), nodes=9),
    "NAF": lambda: nf.NAF(3, transforms=1, hidden=(8,), components=4),
    "UNAF": lambda: nf.UNAF(3, transforms=1, hidden=(8,), integrand=(8,), nodes=9),
    "TARFlow": lambda: nf.TARFlow(dim=3, blocks=1, width=16, layers=1, head_dim=8),
    "CNF": lambda: nf.CNF(flowforge.nn.MLP(dim=3, width=8, depth=1), steps=2),
    "FFJORD": lambda: nf.FFJORD(3, width=8, depth=1, steps=2),
    "ResidualBlock": lambda: nf.ResidualBlock(3, (8,)),
    "ResidualFlow": lambda: nf.ResidualFlow(3, blocks=1, hidden=(8,)),
}


def test_every_exported_layer_is_listed_here():
    layers = {n for n in nf.__all__ if inspect.isclass(c := getattr(nf, n)) and issubclass(c, nn.Module)}
    # not layers: the objectives, the base distribution and the conditioner network; TARFlowBlock maps
    # token sequences and has its own battery in tests/test_tarflow.py
    layers -= {"ReverseKL", "SelfImprovement", "StandardNormal", "MADE", "TARFlowBlock"}
    layers -= {"LipSwish"}  # an activation inside ResidualBlock, not a layer
    # conditioned on a bead-type sequence (x, types): log-det against autograd in tests/test_transfer.py
    layers -= {"TransferableTARFlow", "BoundTransferableFlow"}
    # image layers (B, C, H, W): their own battery in tests/test_glow.py
    layers -= {"Glow", "ActNorm2d", "InvConv2d", "AffineCoupling2d", "Squeeze"}
    # particles (B, N, d) on the mean-free subspace, with auxiliary variables: tests/test_eq_coupling.py
    layers -= {"AugmentedEquivariantFlow", "EquivariantCoupling"}
    # videos (B, F, ...) and the flow-score denoiser (not a bijection): tests/test_video.py
    layers -= {"VideoTARFlow", "FlowScoreDenoiser"}
    assert layers <= set(LAYERS), f"add to LAYERS: {sorted(layers - set(LAYERS))}"


@pytest.mark.parametrize("name", list(LAYERS))
def test_every_layer_is_a_bijection(name):
    layer = LAYERS[name]()
    assert isinstance(layer, Bijection), f"{name} lacks forward/inverse of core.contracts.Bijection"
    x = torch.randn(4, 3)
    z, ladj = layer(x)
    assert z.shape == x.shape and ladj.shape == (4,)
    assert layer.inverse(z)[0].shape == x.shape


def test_bijection_protocol_has_one_home():
    assert nf.Bijection is Bijection
    import flowforge.normalizing.flow as flow_module

    assert not hasattr(flow_module, "Bijection"), "the protocol lives in core/contracts.py only"


def test_models_that_draw_their_own_batches_say_so():
    for cls in (nf.ReverseKL, nf.SelfImprovement):
        assert cls.makes_own_batches is True
    assert not getattr(nf.Flow, "makes_own_batches", False)
    assert not getattr(nf.NSF, "makes_own_batches", False)
