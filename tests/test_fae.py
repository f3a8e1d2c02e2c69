"""FAE (feature autoencoder with one attention layer) and its digits recipes."""

import pytest
import torch

from flowforge.data import load_digits
from flowforge.latent import FeatureAutoencoder
from flowforge.nn import PatchFeatureNet

pytest.importorskip("sklearn")


def tiny_fae(**kw) -> FeatureAutoencoder:
    torch.manual_seed(0)
    return FeatureAutoencoder(
        PatchFeatureNet(image_size=8, patch=2, dim=16), num_tokens=16, feature_dim=16, **kw
    )


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    s = load_digits("train")
    return 2 * s.x[:256].float() / 16 - 1


def test_fae_shapes_and_one_attention_layer():
    fae = tiny_fae(latent_dim=5, width=8)
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    mean, logvar = fae.encode(x)
    assert mean.shape == logvar.shape == (3, 5, 1, 1) and fae.latent_shape == (5, 1, 1)
    assert fae.target_features(x).shape == (3, 16, 16)
    assert fae.decode_features(mean).shape == (3, 16, 16)
    assert fae.decode(mean).shape == (3, 1, 8, 8) and fae(x).abs().max() <= 1
    attn = [m for m in fae.encoder.modules() if isinstance(m, torch.nn.MultiheadAttention)]
    assert len(attn) == 1
    # nothing else in the encoder mixes tokens: its only other layers are a LayerNorm and the final Linear
    kinds = {type(m).__name__ for m in fae.encoder.modules()} - {"_OneLayerEncoder"}
    assert kinds == {"MultiheadAttention", "NonDynamicallyQuantizableLinear", "LayerNorm", "Linear"}


def test_fae_features_frozen_and_pixel_decoder_stops_gradient():
    fae = tiny_fae(width=8).train()
    assert not fae.features.training and not any(p.requires_grad for p in fae.features.parameters())
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    fae.losses(x)["pixel"].backward()
    enc = [p.grad for p in fae.encoder.parameters()] + [p.grad for p in fae.feat_in.parameters()]
    assert all(g is None or g.abs().max() == 0 for g in enc)  # the latent is shaped by the features alone
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in fae.pixel_decoder.parameters())
    fae.zero_grad()
    fae.losses(x)["feature"].backward()
    assert fae.encoder.attn.in_proj_weight.grad.abs().max() > 0


def test_fae_feature_loss_decreases(digits):
    fae = tiny_fae(width=8)
    opt = torch.optim.Adam([p for p in fae.parameters() if p.requires_grad], lr=3e-3)
    g = torch.Generator().manual_seed(0)

    def feat_loss() -> float:
        torch.manual_seed(1)
        with torch.no_grad():
            return float(fae.losses(digits)["feature"])

    before = feat_loss()
    for _ in range(40):
        loss = fae.loss(digits[torch.randint(0, len(digits), (32,), generator=g)])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert feat_loss() < 0.7 * before


def test_fae_bad_inputs():
    with pytest.raises(ValueError, match="square"):
        FeatureAutoencoder(PatchFeatureNet(image_size=8), num_tokens=15, feature_dim=32)
    with pytest.raises(ValueError, match="divisible by heads"):
        FeatureAutoencoder(PatchFeatureNet(image_size=8), num_tokens=16, feature_dim=30, heads=4)
    fae = tiny_fae()
    with pytest.raises(ValueError, match=r"expects images \(B, 1, 8, 8\)"):
        fae.encode(torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match="latents must be"):
        fae.decode(torch.zeros(2, 6))
    wrong = FeatureAutoencoder(PatchFeatureNet(image_size=8, dim=32), num_tokens=16, feature_dim=16, heads=4)
    with pytest.raises(ValueError, match="feature network gave"):
        wrong.encode(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="multiple of patch"):
        PatchFeatureNet(image_size=8, patch=3)


def test_fae_recipes_train_and_evaluate(tmp_path):
    from flowforge.recipes import evaluate, sample, train_recipe

    over = {"feature_steps": 3, "feature_dim": 16, "width": 8, "threads": 1}
    train_recipe("digits-fae", overrides=over, out=tmp_path / "fae", steps=3, progress=False)
    res = evaluate(tmp_path / "fae")
    assert {"recon", "fd", "probe_acc"} <= set(res) and 0 <= res["probe_acc"] <= 1
    lat = {"fae_run": str(tmp_path / "fae"), "width_fm": 16, "depth_fm": 1, "eval_n": 50, "threads": 1}
    train_recipe("digits-fae-latent", overrides=lat, out=tmp_path / "lat", steps=3, progress=False)
    res = evaluate(tmp_path / "lat", steps=2)
    assert {"fd", "probe_acc"} <= set(res) and res["fd"] > 0
    x = sample(tmp_path / "lat", 4, steps=2)
    assert x.shape == (4, 1, 8, 8) and x.dtype == torch.uint8
    with pytest.raises(FileNotFoundError, match="train one first"):
        train_recipe(
            "digits-fae-latent", overrides={"fae_run": str(tmp_path / "nothing")}, out=tmp_path / "x", steps=1
        )
