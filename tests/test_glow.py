"""Glow's image bijections and the multiscale Glow flow (Kingma & Dhariwal, 2018).

The battery of tests/test_bijections.py on images: every layer in float64, parameters moved away
from their identity initialisation, goes through an inverse round trip, a log-determinant check
against the autograd Jacobian of the flattened map, a gradient check and a safetensors round trip.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian

from flowforge.data import dequantization_log_det, dequantize, load_digits
from flowforge.metrics import bits_per_dim
from flowforge.normalizing import ActNorm2d, AffineCoupling2d, Flow, Glow, InvConv2d, Squeeze
from flowforge.train.checkpoint import load_safetensors, save_safetensors


def _perturb(m: nn.Module, seed: int, scale: float) -> nn.Module:
    """Move every parameter away from its initial value; mark ActNorm layers as initialised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
        for mod in m.modules():
            if isinstance(mod, ActNorm2d):
                mod.initialized.fill_(True)
    return m


# name -> (factory(seed), input shape (B, C, H, W))
CASES = {
    "ActNorm2d": (lambda seed: ActNorm2d(2), (2, 2, 4, 4)),
    "InvConv2d": (lambda seed: InvConv2d(3, seed=seed), (2, 3, 4, 4)),
    "AffineCoupling2d": (lambda seed: AffineCoupling2d(3, hidden=8), (2, 3, 4, 4)),
    "AffineCoupling2d-even": (lambda seed: AffineCoupling2d(4, hidden=8), (1, 4, 2, 2)),
    "Squeeze": (lambda seed: Squeeze(), (2, 2, 4, 4)),
    "Glow": (lambda seed: Glow((1, 8, 8), levels=2, steps=2, hidden=8, seed=seed), (2, 1, 8, 8)),
}
NAMES = list(CASES)


def make(name: str, seed: int = 0, perturb: bool = True) -> nn.Module:
    torch.manual_seed(seed)  # the conv nets' default initialisation
    m = CASES[name][0](seed).double()
    # the 16 layers of the full Glow compound the perturbation: smaller steps keep its inverse tame
    return _perturb(m, seed + 100, 0.1 if name == "Glow" else 0.3) if perturb else m


def images(name: str, seed: int = 0) -> torch.Tensor:
    return torch.randn(CASES[name][1], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("name", NAMES)
def test_round_trip(name):
    m = make(name)
    x = images(name)
    z, ladj = m(x)
    assert ladj.shape == (x.shape[0],) and z.numel() == x.numel()
    if name != "Squeeze":
        assert not torch.allclose(z.reshape(x.shape), x), "perturbed bijection should not be the identity"
    x2, ladj_inv = m.inverse(z)
    torch.testing.assert_close(x2, x, atol=1e-10, rtol=0)
    torch.testing.assert_close(ladj + ladj_inv, torch.zeros_like(ladj), atol=1e-10, rtol=0)
    z2 = images(name, seed=1).reshape(z.shape)
    torch.testing.assert_close(m(m.inverse(z2)[0])[0], z2, atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_log_det_matches_autograd_jacobian(name):
    m = make(name)
    x = images(name, seed=2)
    z, ladj = m(x)
    _, ladj_inv = m.inverse(z)
    d = x[0].numel()
    for i in range(x.shape[0]):
        jac = jacobian(lambda xi: m(xi[None])[0].flatten(), x[i], vectorize=True).reshape(d, d)
        sign, logdet = torch.linalg.slogdet(jac)
        assert sign != 0
        torch.testing.assert_close(ladj[i], logdet, atol=1e-8, rtol=1e-8)
        jac_inv = jacobian(lambda zi: m.inverse(zi[None])[0].flatten(), z[i], vectorize=True).reshape(d, d)
        torch.testing.assert_close(ladj_inv[i], torch.linalg.slogdet(jac_inv)[1], atol=1e-8, rtol=1e-8)
        torch.testing.assert_close(jac @ jac_inv, torch.eye(d, dtype=jac.dtype), atol=1e-8, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name):
    m = make(name)
    flow = m if isinstance(m, Flow) else Flow(m, event_shape=CASES[name][1][1:]).double()
    x = images(name, seed=3).requires_grad_(True)
    flow.log_prob(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for pname, p in flow.named_parameters():
        assert p.grad is not None, f"no gradient for {pname}"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"bad gradient for {pname}"


@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip(name, tmp_path):
    m = make(name, seed=0)
    path = tmp_path / "bijection.safetensors"
    save_safetensors(path, {k: v.contiguous() for k, v in m.state_dict().items()})
    fresh = make(name, seed=1, perturb=False)  # other rotation / permutation, uninitialised ActNorm
    fresh.load_state_dict(load_safetensors(path))
    x = images(name)
    for a, b in zip(m(x), fresh(x)):
        assert torch.equal(a, b)
    z = m(x)[0]
    for a, b in zip(m.inverse(z), fresh.inverse(z)):
        assert torch.equal(a, b)


def test_actnorm2d_data_dependent_init_once_and_persisted():
    layer = ActNorm2d(3)
    scale, loc = torch.tensor([3.0, 0.5, 1.5]), torch.tensor([1.0, -2.0, 0.3])
    x = torch.randn(16, 3, 4, 4) * scale[:, None, None] + loc[:, None, None]
    layer.eval()
    assert torch.equal(layer(x)[0], x) and not layer.initialized  # eval mode: no initialisation
    layer.train()
    z, ladj = layer(x)
    assert layer.initialized
    torch.testing.assert_close(z.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        z.transpose(0, 1).flatten(1).std(1, correction=0), torch.ones(3), atol=1e-4, rtol=0
    )
    std = x.transpose(0, 1).flatten(1).std(1, correction=0)
    torch.testing.assert_close(ladj, -(16 * torch.log(std).sum()).expand(16), atol=1e-4, rtol=0)
    before = layer.loc.detach().clone()
    layer(x * 10)  # a second batch does not re-initialise
    assert torch.equal(layer.loc.detach(), before)
    fresh = ActNorm2d(3)
    fresh.load_state_dict(layer.state_dict())
    assert fresh.initialized and torch.equal(fresh(x * 10)[0], layer(x * 10)[0])


def test_glow_initialises_every_actnorm_on_its_first_batch():
    flow = Glow((1, 8, 8), levels=2, steps=2, hidden=8, seed=0)
    x = dequantize(load_digits("train").x[:256], 17, generator=torch.Generator().manual_seed(0))
    outputs: list[torch.Tensor] = []
    acts = [m for m in flow.modules() if isinstance(m, ActNorm2d)]
    hooks = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out[0].detach())) for m in acts]
    flow(x)  # data-dependent initialisation of every ActNorm2d, in data-to-noise order
    for h in hooks:
        h.remove()
    assert len(outputs) == len(acts) == 4 and all(bool(m.initialized) for m in acts)
    for z in outputs:  # each sees the output of the layers before it, already initialised
        per_channel = z.transpose(0, 1).flatten(1)
        torch.testing.assert_close(per_channel.mean(1), torch.zeros(z.shape[1]), atol=1e-4, rtol=0)
        torch.testing.assert_close(
            per_channel.std(1, correction=0), torch.ones(z.shape[1]), atol=1e-3, rtol=0
        )


def test_squeeze_layout_and_latent_shapes():
    x = torch.arange(32.0).view(1, 2, 4, 4)
    z, _ = Squeeze()(x)
    assert z.shape == (1, 8, 2, 2)
    assert z[0, :4, 0, 0].tolist() == [0.0, 1.0, 4.0, 5.0]  # the top-left 2x2 patch of channel 0
    flow = Glow((3, 16, 8), levels=3, steps=1, hidden=4)
    shapes = flow.transform.latent_shapes
    assert shapes == [(6, 8, 4), (12, 4, 2), (48, 2, 1)]
    assert sum(math.prod(s) for s in shapes) == 3 * 16 * 8


def test_bits_per_dim_matches_the_image_recipes_convention():
    flow = Glow((1, 8, 8), levels=2, steps=1, hidden=8, seed=0).eval()
    x = dequantize(load_digits("test").x[:32], 17, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        bpd = flow.bits_per_dim(x, levels=17)
        nll = -float((flow.log_prob(x) + dequantization_log_det(64, 17)).double().mean())
        assert abs(float(flow.loss(x)) - float(-flow.log_prob(x).mean() / 64)) < 1e-5  # nats per dim
    assert bpd.shape == (32,)
    assert abs(float(bpd.double().mean()) - bits_per_dim(nll, 64)) < 1e-4


def test_few_training_steps_on_digits_lower_the_nll():
    torch.manual_seed(0)
    data = load_digits("train")
    g = torch.Generator().manual_seed(0)
    flow = Glow((1, 8, 8), levels=2, steps=2, hidden=16, seed=0)
    held = dequantize(data.x[:256], data.levels, generator=g)
    flow(held)  # data-dependent initialisation
    flow.eval()
    with torch.no_grad():
        before = float(flow.bits_per_dim(held, levels=data.levels).mean())
    flow.train()
    opt = torch.optim.Adam(flow.parameters(), lr=2e-3)
    for _ in range(60):
        idx = torch.randint(0, len(data.x), (64,), generator=g)
        loss = flow.loss(dequantize(data.x[idx], data.levels, generator=g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    flow.eval()
    with torch.no_grad():
        after = float(flow.bits_per_dim(held, levels=data.levels).mean())
    print(f"digits bpd {before:.3f} -> {after:.3f}")
    assert math.isfinite(after) and after < before - 0.1, (before, after)


def test_errors_say_what_to_write():
    with pytest.raises(ValueError, match="even H and W.*fewer levels"):
        Squeeze()(torch.randn(2, 1, 5, 4))
    with pytest.raises(ValueError, match="divisible by 4"):
        Squeeze().inverse(torch.randn(2, 3, 2, 2))
    with pytest.raises(ValueError, match=r"\(B, 2, H, W\).*channels=3"):
        ActNorm2d(2)(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\(B, 4, H, W\).*channels=2"):
        InvConv2d(4).inverse(torch.randn(2, 2, 4, 4))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\).*channels=4"):
        AffineCoupling2d(3, hidden=4)(torch.randn(2, 4, 4, 4))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\).*ActNorm"):
        ActNorm2d(2)(torch.randn(8, 2))
    with pytest.raises(ValueError, match="one half conditions the other"):
        AffineCoupling2d(1)
    with pytest.raises(ValueError, match="seed= or generator="):
        InvConv2d(2, seed=0, generator=torch.Generator())
    with pytest.raises(ValueError, match=r"levels <= 2"):
        Glow((1, 12, 12), levels=3)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        Glow((8, 8))
    with pytest.raises(ValueError, match=r"expected points of shape \(B, 1, 8, 8\)"):
        Glow((1, 8, 8), levels=1, steps=1, hidden=4)(torch.randn(2, 3, 8, 8))


class _Inverse(nn.Module):
    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.m.inverse(z)


@pytest.mark.parametrize("name", [n for n in NAMES if n not in ("Squeeze", "Glow")])
def test_parameter_gradients_match_finite_differences(name):
    # catches a detached or mis-scaled path that "gradients reach every parameter" cannot see
    m = make(name)
    x = images(name, seed=4)
    z = m(x)[0].detach()
    for module, inp in ((m, x), (_Inverse(m), z)):
        names = [n for n, _ in module.named_parameters()]
        params = tuple(p.detach().clone().requires_grad_(True) for _, p in module.named_parameters())

        def run(*ps: torch.Tensor, module=module, names=names, inp=inp) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.func.functional_call(module, dict(zip(names, ps)), (inp,))

        assert torch.autograd.gradcheck(run, params, eps=1e-7, atol=1e-6)  # small eps: few ReLU kinks crossed


# ----------------------------------------------------------------------------------------------- recipe


def test_digits_glow_recipe_trains_and_evaluates(tmp_path, capsys):
    import json

    from flowforge.cli import main

    out = tmp_path / "glow"
    sets = ["--set", "flow_levels=2 flow_steps=1 hidden=8 batch_size=32"]
    assert main(["train", "digits-glow", "--steps", "2", "--out", str(out), "--quiet", *sets]) == 0
    capsys.readouterr()
    assert main(["eval", str(out)]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(res) == {"nll", "bpd"} and math.isfinite(res["bpd"]) and res["bpd"] > 0
    assert math.isclose(res["bpd"], res["nll"] / (64 * math.log(2)), rel_tol=1e-9)
    assert main(["sample", str(out), "--n", "4", "--out", str(tmp_path / "s.npy")]) == 0
    import numpy as np

    imgs = np.load(tmp_path / "s.npy")
    assert imgs.shape == (4, 1, 8, 8) and imgs.dtype == np.uint8 and imgs.max() <= 16
    assert (
        main(
            [
                "train",
                "digits-glow",
                "--steps",
                "1",
                "--out",
                str(tmp_path / "c"),
                "--quiet",
                "--set",
                "conditional=true",
            ]
        )
        == 2
    )
    assert "drop --set conditional=true" in capsys.readouterr().err
