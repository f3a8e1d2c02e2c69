"""``with_two_times``: a two-time copy of a trained velocity net equals it for every start time ``r``, and
its gap branch is live (trainable) afterwards."""

from __future__ import annotations

import pytest
import torch

from flowforge.nn import MLP, DiT, UNet, with_two_times


def _nets():
    return {
        "unet": (UNet(channels=8, mults=(1, 2), blocks=1, attention=(1,), num_classes=10), (1, 8, 8), True),
        "dit": (
            DiT(image_size=8, in_channels=1, patch=2, width=32, depth=2, heads=4, num_classes=10),
            (1, 8, 8),
            True,
        ),  # fmt: skip
        "mlp": (MLP(2, 16, 2, time_freqs=4), (2,), False),
    }


@pytest.mark.parametrize("kind", ["unet", "dit", "mlp"])
def test_copy_equals_the_net_for_every_start_time_and_its_gap_branch_trains(kind):
    torch.manual_seed(0)
    net, shape, labels = _nets()[kind]
    with torch.no_grad():  # a "trained" net: no zero-initialised layers left
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    u = with_two_times(net)
    x, t = torch.randn(5, *shape), torch.rand(5)
    cond = {"y": torch.tensor([0, 3, 9, 10, 1])} if labels else {}
    ref = net(x, t, **cond)
    assert ref.abs().mean() > 0.05
    for r in (torch.zeros(5), torch.rand(5), t):
        assert torch.equal(u(x, t, r=r, **cond), ref)
    assert u.two_times and not net.two_times
    assert all(torch.equal(net.state_dict()[k], v) for k, v in before.items())  # the original is untouched
    # one gradient step on a loss that depends on r moves the output off the teacher's for r != t
    opt = torch.optim.SGD(u.parameters(), lr=0.1)
    (u(x, t, r=torch.zeros(5), **cond) - 1.0).pow(2).mean().backward()
    opt.step()
    with torch.no_grad():
        a, b = u(x, t, r=torch.zeros(5), **cond), u(x, t, r=t, **cond)
    assert (a - b).abs().max() > 1e-4


def test_refuses_nets_that_already_take_two_times_and_other_modules():
    with pytest.raises(ValueError, match="already takes two times"):
        with_two_times(MLP(2, 8, 1, two_times=True))
    with pytest.raises(ValueError, match="UNet, DiT or MLP"):
        with_two_times(torch.nn.Linear(2, 2))
