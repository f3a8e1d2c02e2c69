"""Transferable Boltzmann generator: the bead-chain family, the type-conditioned TARFlow, the recipe."""

from __future__ import annotations

import json
import math

import pytest
import torch

from flowforge.cli.main import main
from flowforge.data.chains import BeadChain, ChainFamilyData, ChainTypes, chain_family, parse_types
from flowforge.normalizing import importance_sample, smc
from flowforge.normalizing.transferable import TransferableTARFlow

D = torch.float64


def _rotate(x: torch.Tensor, angle: float, reflect: bool = False) -> torch.Tensor:
    p = x.reshape(x.shape[0], -1, 2).clone()
    if reflect:
        p[..., 0] = -p[..., 0]
    c, s = math.cos(angle), math.sin(angle)
    r = torch.tensor([[c, -s], [s, c]], dtype=x.dtype)
    return (p @ r.T).reshape(x.shape)


def test_chain_energy_invariances_float64():
    chain = BeadChain("ABCCAB")
    x = chain.sample_bonded(64, generator=torch.Generator().manual_seed(0))
    x = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=D)
    e = chain(x)
    # rotations and reflections about the origin leave the whole energy (centre term included) unchanged
    for angle, refl in [(0.7, False), (2.5, True), (-1.3, False)]:
        torch.testing.assert_close(chain(_rotate(x, angle, refl)), e, rtol=1e-12, atol=1e-10)
    # translations leave the internal energy unchanged; the centre term is n/2 |mean|^2
    shift = torch.tensor([3.0, -1.5], dtype=D).repeat(chain.n)
    internal = chain.bonded_energy(x) + chain.repulsion_energy(x)
    y = x + shift
    torch.testing.assert_close(
        chain.bonded_energy(y) + chain.repulsion_energy(y), internal, rtol=1e-12, atol=1e-10
    )
    centre = x.reshape(64, -1, 2).mean(1) + shift[:2]
    torch.testing.assert_close(chain.com_energy(y), 0.5 * chain.n * centre.square().sum(-1))


def test_chain_energy_closed_form_and_gradient():
    # A C A at a right angle, bonds of length 1 (rest length 0.95): only the bonds cost energy
    chain = BeadChain("ACA")
    x = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0, 1.0]], dtype=D)
    x = x - x.reshape(1, 3, 2).mean(1).repeat(1, 3)  # centre at the origin
    k = math.sqrt(40.0 * 30.0)
    torch.testing.assert_close(chain(x), torch.tensor([k * 0.05**2], dtype=D))
    # folded: the two outer beads overlap at distance 0.5 < sigma = 1.2: repulsion 5 (1 - 0.25/1.44)^2
    y = torch.tensor([[0.0, 0.0, 0.95, 0.0, 0.5, 0.0]], dtype=D)
    torch.testing.assert_close(chain.repulsion_energy(y), torch.tensor([5 * (1 - 0.25 / 1.44) ** 2], dtype=D))
    # gradient: autograd against central finite differences, in float64
    chain = BeadChain("BCACAB")
    x = chain.sample_bonded(4, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    x.data[:, :4] += 0.3  # push some beads into the repulsion range
    (g,) = torch.autograd.grad(chain(x).sum(), x)
    eps = 1e-6
    fd = torch.zeros_like(x)
    with torch.no_grad():
        for j in range(x.shape[1]):
            dx = torch.zeros_like(x)
            dx[:, j] = eps
            fd[:, j] = (chain(x + dx) - chain(x - dx)) / (2 * eps)
    torch.testing.assert_close(g, fd, rtol=1e-6, atol=1e-6)


def test_reference_log_z_against_plain_importance_sampling():
    # an independent estimate: Cartesian random-walk proposal x1 ~ N(0, I), x_{i+1} = x_i + N(0, s^2 I)
    chain = BeadChain("BCB")  # repulsion between the outer beads lowers log Z by about 0.15
    lz, se = chain.reference_log_z(200_000, seed=0)
    assert chain.bonded_log_z() - lz > 0.1
    g = torch.Generator().manual_seed(0)
    n, s = 1_000_000, 0.8
    x1 = torch.randn(n, 2, generator=g, dtype=D)
    steps = s * torch.randn(n, 2, 2, generator=g, dtype=D)
    x = torch.cat([x1[:, None], x1[:, None] + torch.cumsum(steps, 1)], 1).reshape(n, 6)
    log_q = -0.5 * x1.square().sum(-1) - 0.5 * (steps / s).square().sum((1, 2)) - 3 * math.log(2 * math.pi)
    log_q = log_q - 4 * math.log(s)
    log_w = -chain(x) - log_q
    est = float(torch.logsumexp(log_w, 0) - math.log(n))
    assert se < 1e-3
    assert abs(est - lz) < 0.03, (est, lz)


def test_reference_samples_agree_with_exact_bonded_chain(tmp_path):
    chain = BeadChain("ABA")  # 3 beads: the repulsion is negligible, so PT must match the exact sampler
    x = chain.reference_samples(512, seed=0, cache_dir=tmp_path, chains=128, burn_in=200, thin=5)
    y = chain.sample_bonded(20_000, generator=torch.Generator().manual_seed(0))
    assert list(tmp_path.glob("BeadChain-*.npy")), "reference samples are cached"

    def stats(z: torch.Tensor) -> torch.Tensor:
        p = z.double().reshape(z.shape[0], 3, 2)
        b = p[:, 1:] - p[:, :-1]
        cos = (b[:, 0] * b[:, 1]).sum(-1) / b.norm(dim=-1).prod(-1)
        return torch.stack([b.norm(dim=-1).mean(1), cos, p.mean(1).square().sum(-1)], 1).mean(0)

    torch.testing.assert_close(stats(x), stats(y), atol=0.04, rtol=0.1)


def _random_flow(seed: int = 0, blocks: int = 3) -> TransferableTARFlow:
    torch.manual_seed(seed)
    flow = TransferableTARFlow(3, blocks=blocks, width=16, layers=1, head_dim=8).double()
    for b in flow.blocks:  # zero-initialised outputs make every block the identity; randomise them
        torch.nn.init.normal_(b.out.weight, std=0.3)
        torch.nn.init.normal_(b.out.bias, std=0.3)
    return flow


@pytest.mark.parametrize("types", ["ABCA", "CABBCAC"])
def test_flow_log_prob_of_own_samples_equals_sampling_density(types):
    flow = _random_flow()
    t = parse_types(types)
    x, log_q = flow.sample_and_log_prob(32, t, generator=torch.Generator().manual_seed(0))
    assert x.shape == (32, 2 * len(types))
    torch.testing.assert_close(flow.log_prob(x, t), log_q, rtol=1e-10, atol=1e-9)
    # the log-determinant against the autograd Jacobian of x -> z
    xi = x[:1].detach()
    jac = torch.autograd.functional.jacobian(lambda v: flow(v, t)[0].reshape(1, -1), xi).reshape(
        xi.numel(), -1
    )
    torch.testing.assert_close(flow(xi, t)[1][0], torch.linalg.slogdet(jac)[1], rtol=1e-9, atol=1e-9)


def test_conditioning_changes_the_density_including_look_ahead():
    flow = _random_flow(1, blocks=1)  # one block, natural order: token 0 comes first
    x = flow.sample(16, parse_types("ABCA"), generator=torch.Generator().manual_seed(0))
    lp = flow.log_prob(x, parse_types("ABCA"))
    assert (flow.log_prob(x, parse_types("CBAA")) - lp).abs().min() > 1e-6
    # only the last type differs: token 0's parameters must still change (the encoder is bidirectional)
    z_a, _ = flow(x, parse_types("ABCA"))
    z_b, _ = flow(x, parse_types("ABCC"))
    assert (z_a[:, 0] - z_b[:, 0]).abs().max() > 1e-6
    # per-sample types (B, T) agree with shared types (T,)
    torch.testing.assert_close(flow.log_prob(x, parse_types("ABCA").expand(16, -1)), lp)


def test_bound_flow_drives_is_and_smc_and_family_batches():
    flow = _random_flow().float()
    chain = BeadChain("BCAB")
    bound = flow.bind(chain.types)
    g = torch.Generator().manual_seed(0)
    r = importance_sample(bound, chain, 256, generator=g)
    assert 0 < r.ess <= 1 and math.isfinite(r.log_z)
    s = smc(bound, chain, 64, steps=3, generator=g)
    assert s.samples.shape == (64, 8) and math.isfinite(s.log_z)
    data = ChainFamilyData([chain.sample_bonded(50).float()], [chain.types])
    xb, tb = data(16, g)
    assert xb.shape == (16, 8) and tb.shape == (16, 4)
    assert torch.isfinite(flow.loss((xb, tb)))
    # augmentation applies symmetries only: one configuration keeps its internal energy in every copy
    one = chain.sample_bonded(1, generator=g)
    xa, _ = ChainFamilyData([one], [chain.types])(32, g)
    internal = chain.bonded_energy(xa.double()) + chain.repulsion_energy(xa.double())
    torch.testing.assert_close(
        internal, (chain.bonded_energy(one) + chain.repulsion_energy(one)).expand(32), atol=1e-4, rtol=1e-5
    )
    assert xa.reshape(32, 4, 2).mean(1).std(0).min() > 0.2  # a fresh centre each


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown bead type letters"):
        BeadChain("ABX")
    with pytest.raises(ValueError, match="at least 3 beads"):
        BeadChain("AB")
    with pytest.raises(ValueError, match="one radius"):
        ChainTypes(radius=(0.5,))
    with pytest.raises(ValueError, match=r"shape \(B, 8\)"):
        BeadChain("ABCA")(torch.zeros(2, 6))
    flow = _random_flow()
    with pytest.raises(ValueError, match="give one type a particle"):
        flow.log_prob(torch.zeros(2, 8, dtype=D), parse_types("ABC"))
    with pytest.raises(ValueError, match="integers"):
        flow.log_prob(torch.zeros(2, 8, dtype=D), torch.zeros(4))
    with pytest.raises(ValueError, match="types must lie"):
        flow.log_prob(torch.zeros(2, 8, dtype=D), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="max_len"):
        flow.log_prob(torch.zeros(2, 40, dtype=D), torch.zeros(20, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(x, types\) batches"):
        flow.loss(torch.zeros(2, 8))
    with pytest.raises(ValueError, match=r"must have shape \(N, 8\)"):
        ChainFamilyData([torch.zeros(5, 6)], [parse_types("ABCA")])
    with pytest.raises(ValueError, match="distinct chains"):
        chain_family([3], 100)


def test_chains_transfer_recipe_smoke(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FLOWFORGE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    sets = ("train_lengths=4+5 per_length=2 n_train=256 blocks=2 width=16 layers=1 head_dim=8 test_chain=ABCAB "
            "si_steps=3 si_proposals=256 si_refresh=2 ref_samples=20000 eval_samples=256")  # fmt: skip
    assert (
        main(["train", "chains-transfer", "--steps", "10", "--out", str(out), "--quiet", "--set", sets]) == 0
    )
    capsys.readouterr()
    assert main(["eval", str(out)]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"ess", "logz", "logz_ref", "logz_error", "ess_si", "logz_si", "logz_error_si"} <= set(res)
    assert 0 < res["ess"] <= 1 and 0 < res["ess_si"] <= 1 and res["si_evals"] == 512
    cfg = json.loads((out / "config.json").read_text())
    assert "ABCAB" not in cfg["family"].split(",")
    assert main(["train", "chains-transfer", "--out", str(tmp_path / "x"), "--set", "test_chain=ABQ"]) != 0
    assert "unknown bead type letters" in capsys.readouterr().err
