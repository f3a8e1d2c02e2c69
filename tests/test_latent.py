"""Latent models: the KL autoencoder and LatentModel over flow matching and TARFlow."""

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from flowforge.continuous import FlowMatching
from flowforge.data import dequantize, load_digits
from flowforge.latent import KLAutoencoder, LatentModel, gaussian_kl, latent_stats
from flowforge.nn import MLP
from flowforge.normalizing import TARFlow
from flowforge.train import train

pytest.importorskip("sklearn")


def tiny_ae(**kw) -> KLAutoencoder:
    return KLAutoencoder(image_size=8, channels=(8, 16), **kw)


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    s = load_digits("train")
    x = dequantize(s.x[:512], s.levels, generator=torch.Generator().manual_seed(0))
    return x, s.y[:512]


@pytest.fixture(scope="module")
def trained_ae(digits) -> KLAutoencoder:
    """A tiny autoencoder after 60 Adam steps on the digits (latents with structure, not just init)."""
    x, _ = digits
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before conftest's one-thread fixture
    torch.manual_seed(0)
    ae = tiny_ae()
    opt = torch.optim.Adam(ae.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    for _ in range(60):
        loss = ae.loss(x[torch.randint(len(x), (64,), generator=gen)])
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    ae.zero_grad(set_to_none=True)
    return ae.eval()


def latent_fm(ae: KLAutoencoder, **kw) -> FlowMatching:
    return FlowMatching(MLP(dim=ae.latent_shape, width=32, depth=2, **kw))


def latent_tarflow(ae: KLAutoencoder, **kw) -> TARFlow:
    return TARFlow(image_shape=ae.latent_shape, patch=1, blocks=2, width=16, layers=1, head_dim=8, **kw)


def stats(ae: KLAutoencoder, x: torch.Tensor) -> dict:
    shift, scale = latent_stats(ae, x)
    return {"shift": shift, "scale": scale}


# ---------------------------------------------------------------------------------------------------
# KLAutoencoder


def test_gaussian_kl_closed_form():
    mean = torch.tensor([[0.0, 1.0, -2.0], [0.5, 0.0, 0.0]], dtype=torch.float64)
    logvar = torch.tensor([[0.0, math.log(4.0), -1.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    # by hand: 0.5 * (mu^2 + s^2 - 1 - log s^2) per dimension
    row0 = 0.5 * ((0 + 1 - 1 - 0) + (1 + 4 - 1 - math.log(4.0)) + (4 + math.exp(-1) - 1 + 1))
    row1 = 0.5 * 0.25
    torch.testing.assert_close(gaussian_kl(mean, logvar), torch.tensor([row0, row1], dtype=torch.float64))
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, (0.5 * logvar).exp()), torch.distributions.Normal(0.0, 1.0)
    ).sum(1)
    torch.testing.assert_close(gaussian_kl(mean, logvar), ref)
    assert gaussian_kl(torch.zeros(2, 4, 3, 3), torch.zeros(2, 4, 3, 3)).abs().max() == 0


@pytest.mark.parametrize("recon", ["l1", "mse"])
def test_ae_loss_is_reconstruction_plus_weighted_kl(recon):
    torch.manual_seed(0)
    ae = tiny_ae(kl_weight=0.3, recon=recon).double()
    x = torch.rand(5, 1, 8, 8, dtype=torch.float64) * 2 - 1
    torch.manual_seed(7)
    loss = ae.loss((x, torch.zeros(5, dtype=torch.long)))  # labels are ignored
    torch.manual_seed(7)
    mean, logvar = ae.encode(x)
    z = mean + (0.5 * logvar).exp() * torch.randn_like(mean)
    d = ae.decode_raw(z) - x
    rec = (d.abs() if recon == "l1" else d.square()).sum((1, 2, 3))
    want = (rec + 0.3 * gaussian_kl(mean, logvar)).mean() / 64
    torch.testing.assert_close(loss, want)


@pytest.mark.parametrize(
    ("size", "latent"), [(28, (4, 7, 7)), (8, (4, 4, 4)), (16, (3, 4, 4))], ids=["mnist", "digits", "c3"]
)
def test_ae_shapes(size, latent):
    c = latent[0]
    ae = KLAutoencoder(image_size=size, latent_channels=c, channels=(8, 16))
    assert ae.latent_shape == latent
    x = torch.rand(3, 1, size, size) * 2 - 1
    mean, logvar = ae.encode(x)
    assert mean.shape == logvar.shape == (3, *latent)
    y = ae.decode(mean * 50)  # far outside the training range: still clamped to images in [-1, 1]
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    assert ae(x).shape == x.shape


def test_ae_default_is_mnist_kl_f4():
    ae = KLAutoencoder()
    assert ae.latent_shape == (4, 7, 7) and ae.downsample == 4 and ae.channels == (16, 32)


def test_ae_bad_inputs_say_what_to_write():
    with pytest.raises(ValueError, match="image_size"):
        tiny_ae().encode(torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError, match="latents"):
        tiny_ae().decode(torch.zeros(2, 4, 8, 8))
    with pytest.raises(ValueError, match="power of 2"):
        KLAutoencoder(downsample=3)
    with pytest.raises(ValueError, match="not divisible"):
        KLAutoencoder(image_size=28, downsample=8)
    with pytest.raises(ValueError, match="recon"):
        KLAutoencoder(recon="l2")


def test_ae_learns_digits(digits, trained_ae):
    x, _ = digits
    with torch.no_grad():
        before = (tiny_ae()(x) - x).square().mean()  # an untrained AE of the same architecture
        after = (trained_ae(x) - x).square().mean()
    assert after < 0.5 * before


# ---------------------------------------------------------------------------------------------------
# latent_stats and LatentModel


@pytest.mark.parametrize("per_channel", [True, False])
def test_latent_stats_standardise(digits, trained_ae, per_channel):
    x, _ = digits
    shift, scale = latent_stats(trained_ae, x, batch_size=100, per_channel=per_channel)
    assert shift.shape == scale.shape == ((4,) if per_channel else (1,))
    lm = LatentModel(latent_fm(trained_ae), trained_ae, shift=shift, scale=scale)
    z = lm.encode(x).double()
    if per_channel:
        mean, std = z.mean((0, 2, 3)), z.transpose(0, 1).flatten(1).std(1)
    else:
        mean, std = z.mean().reshape(1), z.std().reshape(1)
    torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-4, rtol=0)
    torch.testing.assert_close(std, torch.ones_like(std), atol=1e-4, rtol=0)
    if per_channel:  # the raw channels really differ, so the test can tell the two apart
        assert scale.max() / scale.min() > 1.05 or shift.abs().max() > 0.05


def test_autoencoder_is_frozen_and_optimizer_sees_only_the_inner_model(digits, trained_ae):
    x, y = digits
    inner = latent_fm(trained_ae, num_classes=10)
    lm = LatentModel(inner, trained_ae, **stats(trained_ae, x))
    lm.train()
    assert lm.inner.training and not lm.autoencoder.training
    trainable = [p for p in lm.parameters() if p.requires_grad]  # what the trainer hands to AdamW
    assert {id(p) for p in trainable} == {id(p) for p in inner.parameters()}
    lm.loss((x[:16], y[:16])).backward()
    assert all(p.grad is None for p in lm.autoencoder.parameters())
    assert all(p.grad is not None for p in inner.parameters())
    keys = lm.state_dict().keys()
    assert {"shift", "scale"} <= keys and any(k.startswith("autoencoder.") for k in keys)


def test_training_with_the_trainer_leaves_the_autoencoder_unchanged(digits, trained_ae):
    x, y = digits
    before = {k: v.clone() for k, v in trained_ae.state_dict().items()}
    lm = LatentModel(latent_fm(trained_ae, num_classes=10), trained_ae, **stats(trained_ae, x))
    inner_before = [p.clone() for p in lm.inner.parameters()]
    run = train(lm, (x, y), steps=3, batch_size=16, progress=False, seed=0)
    for k, v in trained_ae.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert any(not torch.equal(a, b) for a, b in zip(inner_before, lm.inner.parameters()))
    imgs = run.generator().sample(2, cond={"y": torch.tensor([3, 4])}, steps=2)
    assert imgs.shape == (2, 1, 8, 8)


@pytest.mark.parametrize("make_inner", [latent_fm, latent_tarflow], ids=["flow_matching", "tarflow"])
def test_loss_passes_conditions_through(digits, trained_ae, make_inner):
    x, y = digits
    x, y = x[:8], y[:8]
    lm = LatentModel(make_inner(trained_ae, num_classes=10), trained_ae, **stats(trained_ae, x))
    z = lm.encode(x)
    assert z.shape == (8, *trained_ae.latent_shape)
    for batch in [(x, y), {"x": x, "y": y}]:
        torch.manual_seed(3)
        got = lm.loss(batch)
        torch.manual_seed(3)
        want = lm.inner.loss((z, y))
        assert got.ndim == 0 and torch.isfinite(got)
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("make_inner", [latent_fm, latent_tarflow], ids=["flow_matching", "tarflow"])
def test_generator_decodes_images(digits, trained_ae, make_inner):
    x, _ = digits
    lm = LatentModel(make_inner(trained_ae), trained_ae, **stats(trained_ae, x))
    assert lm.loss(x[:16]).ndim == 0
    opts = {"steps": 3} if make_inner is latent_fm else {"method": "jacobi"}
    imgs = lm.eval().generator().sample(5, generator=torch.Generator().manual_seed(0), **opts)
    assert imgs.shape == (5, 1, 8, 8)
    assert imgs.min() >= -1 and imgs.max() <= 1 and imgs.std() > 0


def test_sample_posterior_only_while_training(digits, trained_ae):
    x, _ = digits
    lm = LatentModel(latent_fm(trained_ae), trained_ae, **stats(trained_ae, x), sample_posterior=True)
    lm.train()
    assert not torch.equal(lm.encode(x[:4]), lm.encode(x[:4]))
    lm.eval()
    assert torch.equal(lm.encode(x[:4]), lm.encode(x[:4]))


def test_decode_inverts_encode_up_to_the_autoencoder(digits, trained_ae):
    x, _ = digits
    lm = LatentModel(latent_fm(trained_ae), trained_ae, shift=torch.randn(4), scale=torch.rand(4) + 0.5)
    torch.testing.assert_close(lm.decode(lm.encode(x[:8])), trained_ae(x[:8]), atol=1e-5, rtol=1e-5)
    z = lm.encode(x[:2]).requires_grad_(True)
    lm.decode(z).sum().backward()  # gradients reach the latents, not the frozen weights
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert all(p.grad is None for p in trained_ae.parameters())


@pytest.mark.parametrize("make_inner", [latent_fm, latent_tarflow], ids=["flow_matching", "tarflow"])
def test_state_dict_round_trip_reproduces_samples(tmp_path, digits, trained_ae, make_inner):
    x, _ = digits
    torch.manual_seed(0)
    lm = LatentModel(make_inner(trained_ae), trained_ae, **stats(trained_ae, x))
    with torch.no_grad():  # move the inner model off its (zero-)initialisation so the test can fail
        for p in lm.inner.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_file(lm.state_dict(), str(tmp_path / "model.safetensors"))
    torch.manual_seed(1)  # different random weights and placeholder statistics everywhere
    fresh = LatentModel(make_inner(tiny_ae()), tiny_ae(), shift=0.0, scale=1.0)
    fresh.load_state_dict(load_file(str(tmp_path / "model.safetensors")), strict=True)
    opts = {"steps": 3} if make_inner is latent_fm else {}
    a = lm.eval().generator().sample(4, generator=torch.Generator().manual_seed(5), **opts)
    b = fresh.eval().generator().sample(4, generator=torch.Generator().manual_seed(5), **opts)
    assert torch.equal(a, b)


def test_latent_model_bad_inputs():
    ae = tiny_ae()
    with pytest.raises(ValueError, match="one per latent channel"):
        LatentModel(latent_fm(ae), ae, shift=torch.zeros(3), scale=1.0)
    with pytest.raises(ValueError, match="positive"):
        LatentModel(latent_fm(ae), ae, shift=0.0, scale=torch.tensor([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(TypeError, match="loss"):
        LatentModel(torch.nn.Linear(2, 2), ae, shift=0.0, scale=1.0)
