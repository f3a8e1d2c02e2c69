"""Image networks (UNet, DiT, MM-DiT): shapes, conditioning, zero-init, gradients, batch independence, errors."""

import pytest
import torch

from flowforge import FlowMatching
from flowforge.nn import DiT, MMDiT, MMDiTBlock, UNet

SIZES = {28: dict(patch=4, seg=7), 8: dict(patch=2, seg=4)}


def make(kind: str, size: int, *, cond: bool = True, extra: int = 0) -> torch.nn.Module:
    """Tiny versions of the three networks (seeded)."""
    torch.manual_seed(0)
    p = SIZES[size]
    if kind == "unet":
        return UNet(
            channels=8,
            mults=(1, 2, 2),
            blocks=1,
            attention=(2,),
            heads=2,
            groups=4,
            num_classes=10 if cond else None,
            extra_channels=extra,
        )
    if kind == "dit":
        return DiT(
            image_size=size,
            patch=p["patch"],
            width=32,
            depth=2,
            heads=2,
            num_classes=10 if cond else None,
            extra_channels=extra,
        )
    return MMDiT(image_size=size, patch=p["patch"], width=32, depth=2, heads=2, seg_size=p["seg"])


def perturb(net: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    """Add noise to every parameter so the zero-initialised heads and gates stop hiding the trunk."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return net


def inputs(size: int, b: int = 3, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 1, size, size, generator=g), torch.rand(b, generator=g)


def cond_kwargs(kind: str, size: int, b: int = 3, seed: int = 3) -> dict:
    g = torch.Generator().manual_seed(seed)
    if kind == "mmdit":
        s = SIZES[size]["seg"]
        return {"seg": torch.randint(0, 11, (b, s, s), generator=g)}
    return {"y": torch.randint(0, 10, (b,), generator=g)}


@pytest.mark.parametrize("size", [28, 8])
@pytest.mark.parametrize("kind", ["unet", "dit", "mmdit"])
def test_shapes_and_zero_init(kind, size):
    net = make(kind, size)
    x, t = inputs(size)
    out = net(x, t, **cond_kwargs(kind, size))
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0  # zero-initialised head / adaLN-Zero: a fresh net returns zeros
    out = perturb(net)(x, t, **cond_kwargs(kind, size))
    assert out.shape == x.shape and torch.isfinite(out).all() and out.abs().sum() > 0


@pytest.mark.parametrize("kind", ["unet", "dit"])
def test_y_none_is_the_null_label_and_y_matters(kind):
    net = perturb(make(kind, 8)).eval()
    x, t = inputs(8)
    y = torch.tensor([0, 4, 9])
    null = net(x, t, y=torch.full((3,), 10))
    assert torch.equal(net(x, t), null)
    assert net.num_classes == 10
    out = net(x, t, y=y)
    assert (out - null).flatten(1).abs().amax(1).min() > 1e-4  # every sample changes
    assert (out - net(x, t, y=(y + 1) % 10)).abs().max() > 1e-4


@pytest.mark.parametrize("kind", ["unet", "dit"])
def test_extra_channels_are_used(kind):
    net = perturb(make(kind, 8, extra=2)).eval()
    assert net.extra_channels == 2
    x, t = inputs(8)
    e = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(5))
    assert (net(x, t, extra=e) - net(x, t, extra=torch.zeros_like(e))).abs().max() > 1e-4
    with pytest.raises(ValueError, match="pass extra="):
        net(x, t)
    with pytest.raises(ValueError, match="extra must have shape"):
        net(x, t, extra=e[:, :1])


@pytest.mark.parametrize("kind", ["unet", "dit", "mmdit"])
def test_gradients_reach_every_parameter(kind):
    net = perturb(make(kind, 8, extra=0 if kind == "mmdit" else 1))
    x, t = inputs(8, b=4)
    kw = cond_kwargs(kind, 8, b=4)
    if kind != "mmdit":
        kw["extra"] = torch.randn(4, 1, 8, 8)
    net(x, t, **kw).square().sum().backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert not dead, f"no gradient reaches {dead}"


@pytest.mark.parametrize("kind", ["unet", "dit", "mmdit"])
def test_training_steps_from_zero_init_wake_every_parameter(kind):
    """From the zero-initialised heads, a few Adam steps make every parameter receive a gradient."""
    net = make(kind, 8, extra=0)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    x, t = inputs(8, b=4)
    kw = cond_kwargs(kind, 8, b=4)
    for _ in range(3):
        opt.zero_grad()
        (net(x, t, **kw) - x).square().mean().backward()
        opt.step()
    opt.zero_grad()
    (net(x, t, **kw) - x).square().mean().backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert not dead, f"still no gradient after 3 steps: {dead}"


@pytest.mark.parametrize("kind", ["unet", "dit", "mmdit"])
def test_batch_independence(kind):
    net = perturb(make(kind, 28)).eval()
    x, t = inputs(28, b=4)
    kw = cond_kwargs(kind, 28, b=4)
    full = net(x, t, **kw)
    for i in range(4):
        one = net(x[i : i + 1], t[i : i + 1], **{k: v[i : i + 1] for k, v in kw.items()})
        torch.testing.assert_close(one, full[i : i + 1], atol=1e-5, rtol=1e-4)
    x2 = x.clone()
    x2[1:] = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(net(x2, t, **kw)[:1], full[:1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["unet", "dit", "mmdit"])
def test_scalar_time_is_broadcast(kind):
    net = perturb(make(kind, 8)).eval()
    x, _ = inputs(8)
    assert torch.equal(net(x, torch.tensor(0.3)), net(x, torch.full((3,), 0.3)))
    assert (net(x, torch.full((3,), 0.1)) - net(x, torch.full((3,), 0.9))).abs().max() > 1e-4


def test_mmdit_streams_have_separate_weights_and_seg_matters():
    net = perturb(make("mmdit", 28)).eval()
    assert net.null_seg == net.seg_classes == 11
    for block in net.blocks:
        img = {p.data_ptr() for p in block.image.parameters()}
        ctx = {p.data_ptr() for p in block.context.parameters()}
        assert img and ctx and not img & ctx
    last = net.blocks[-1].context
    assert last.pre_only and not hasattr(last, "mlp")  # SD3: the last block drops the context output
    assert not net.blocks[0].context.pre_only
    x, t = inputs(28)
    seg = cond_kwargs("mmdit", 28)["seg"]
    out = net(x, t, seg=seg)
    null = net(x, t, seg=torch.full_like(seg, 11))
    assert torch.equal(net(x, t), null)  # seg=None is the null map
    assert (out - null).flatten(1).abs().amax(1).min() > 1e-4
    seg2 = seg.clone()
    seg2[:, 3, 3] = (seg2[:, 3, 3] + 1) % 11  # one cell differs
    assert (net(x, t, seg=seg2) - out).flatten(1).abs().amax(1).min() > 1e-5


def test_mmdit_block_joint_attention_mixes_the_streams():
    torch.manual_seed(0)
    block = perturb(MMDiTBlock(16, 2))
    x, c, vec = torch.randn(2, 9, 16), torch.randn(2, 4, 16), torch.randn(2, 16)
    x1, c1 = block(x, c, vec)
    x2, c2 = block(x, torch.randn(2, 4, 16), vec)
    assert (x1 - x2).abs().max() > 1e-4  # the image stream sees the context
    x3, c3 = block(torch.randn(2, 9, 16), c, vec)
    assert (c1 - c3).abs().max() > 1e-4  # and the context sees the image
    x4, c4 = MMDiTBlock(16, 2, context_out=False)(x, c, vec)
    assert c4 is None and x4.shape == x.shape


@pytest.mark.parametrize("kind", ["unet", "dit"])
def test_flow_matching_with_label_dropout(kind):
    net = make(kind, 8)
    fm = FlowMatching(net, label_dropout=0.2)
    assert fm.null_label == 10
    x = torch.rand(6, 1, 8, 8) * 2 - 1
    loss = fm.loss((x, torch.arange(6) % 10))
    loss.backward()
    assert torch.isfinite(loss)


def test_unet_odd_sizes_and_defaults():
    net = UNet()
    assert (net.num_classes, net.extra_channels, net.out_channels) == (None, 0, 1)
    out = perturb(UNet(channels=8, mults=(1, 2, 2, 2), blocks=1, attention=(3,), groups=4))(*inputs(28))
    assert out.shape == (3, 1, 28, 28)  # 28 -> 14 -> 7 -> 4 -> 7 -> 14 -> 28
    rgb = UNet(in_channels=3, out_channels=6, channels=8, blocks=1, groups=4)
    assert rgb(torch.randn(2, 3, 8, 8), torch.rand(2)).shape == (2, 6, 8, 8)


def test_bad_inputs():
    unet, dit, mm = make("unet", 8), make("dit", 8), make("mmdit", 8)
    x, t = inputs(8)
    for net in (unet, dit):
        with pytest.raises(ValueError, match="expects images"):
            net(x[:, 0], t)
        with pytest.raises(ValueError, match="expects images"):
            net(torch.randn(3, 2, 8, 8), t)
        with pytest.raises(ValueError, match=r"labels must lie in 0\.\.9"):
            net(x, t, y=torch.tensor([0, 11, 1]))
        with pytest.raises(ValueError, match=r"labels must lie in 0\.\.9"):
            net(x, t, y=torch.tensor([0, -1, 1]))
        with pytest.raises(ValueError, match="integer class indices"):
            net(x, t, y=torch.zeros(3))
        with pytest.raises(ValueError, match=r"t must have shape"):
            net(x, torch.rand(2))
        with pytest.raises(ValueError, match="takes no extra channels"):
            net(x, t, extra=x)
    with pytest.raises(ValueError, match="unconditional"):
        make("unet", 8, cond=False)(x, t, y=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="expects images"):
        dit(torch.randn(3, 1, 28, 28), t)
    with pytest.raises(ValueError, match="not divisible by patch"):
        DiT(image_size=28, patch=3)
    with pytest.raises(ValueError, match="groups=8 must divide"):
        UNet(channels=12)
    with pytest.raises(ValueError, match="attention lists level indices"):
        UNet(attention=(3,))
    with pytest.raises(ValueError, match="not divisible by heads"):
        UNet(channels=8, mults=(1, 2, 3), heads=5, groups=4)
    with pytest.raises(ValueError, match=r"seg values must lie in 0\.\.10"):
        mm(x, t, seg=torch.full((3, 4, 4), 12))
    with pytest.raises(ValueError, match="seg must be an integer map"):
        mm(x, t, seg=torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="seg must be an integer map"):
        mm(x, t, seg=torch.zeros(3, 7, 7, dtype=torch.long))
