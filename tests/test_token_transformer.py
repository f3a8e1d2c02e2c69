"""TokenTransformer: shapes, adaLN-Zero start, bidirectional attention, class conditioning, errors."""

import pytest
import torch
from torch import nn

from flowforge.nn import TokenTransformer


def _net(**kw):
    torch.manual_seed(0)
    net = TokenTransformer(vocab_size=5, length=6, width=16, depth=2, heads=2, **kw)
    for p in net.parameters():  # leave the zero (adaLN-Zero) start so every path carries signal
        if p.dim() > 0 and bool((p == 0).all()):
            nn.init.normal_(p, std=0.1)
    return net


@torch.no_grad()
def test_fresh_network_gives_uniform_logits_and_shapes():
    net = TokenTransformer(vocab_size=5, length=6, width=16, depth=2, heads=2)
    x = torch.tensor([[0, 5, 5, 1, 2, 4]])
    out = net(x, torch.rand(1))
    assert out.shape == (1, 6, 5)
    assert float(out.abs().max()) == 0.0
    assert net(x[:, :3], 0.5).shape == (1, 3, 5)  # shorter sequences, scalar time


@torch.no_grad()
def test_attention_is_bidirectional_and_time_matters():
    net = _net()
    x = torch.randint(0, 6, (2, 6))
    t = torch.tensor([0.2, 0.7])
    y = x.clone()
    y[:, -1] = (x[:, -1] + 1) % 6
    base = net(x, t)
    assert float((net(y, t)[:, 0] - base[:, 0]).abs().max()) > 1e-6  # the first position sees the last
    assert float((net(x, t.flip(0)) - base).abs().max()) > 1e-6


def test_labels_null_class_and_gradients():
    net = _net(num_classes=3)
    x, t = torch.randint(0, 6, (4, 6)), torch.rand(4)
    with torch.no_grad():
        torch.testing.assert_close(net(x, t), net(x, t, y=torch.full((4,), 3)))  # None is the null class
        assert float((net(x, t, y=torch.tensor([0, 1, 2, 0])) - net(x, t)).abs().max()) > 1e-6
    net(x, t, y=torch.tensor([0, 1, 2, 3])).square().sum().backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in net.parameters())


def test_bad_inputs():
    net = TokenTransformer(vocab_size=5, length=6, width=16, depth=1, heads=2)
    with pytest.raises(ValueError, match=r"x\.long\(\)"):
        net(torch.rand(2, 6), torch.rand(2))
    with pytest.raises(ValueError, match="exceeds"):
        net(torch.zeros(2, 7, dtype=torch.long), torch.rand(2))
    with pytest.raises(ValueError, match="0..5"):
        net(torch.full((2, 6), 6), torch.rand(2))
    with pytest.raises(ValueError, match="unconditional"):
        net(torch.zeros(2, 6, dtype=torch.long), torch.rand(2), y=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="heads"):
        TokenTransformer(vocab_size=5, length=6, width=15, depth=1, heads=2)
