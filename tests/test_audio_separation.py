"""Language-queried audio separation (flowforge.apps.audio, recipes audio-sep / audio-sep-mask)."""

from __future__ import annotations

import math

import pytest
import torch

import flowforge.apps.audio as A


# ---------------------------------------------------------------- SI-SDR
def test_si_sdr_is_scale_invariant_and_infinite_for_a_scaled_copy():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(3, 500, generator=g, dtype=torch.float64)
    est = s + 0.3 * torch.randn(3, 500, generator=g, dtype=torch.float64)
    base = A.si_sdr(est, s)
    for c in (0.01, 2.0, 1e3):
        torch.testing.assert_close(A.si_sdr(c * est, s), base)  # scaling the estimate
        torch.testing.assert_close(A.si_sdr(est, c * s), base)  # scaling the reference
    assert bool((A.si_sdr(-4.0 * s, s) > 100).all())  # any nonzero scale of the truth is perfect
    torch.testing.assert_close(A.si_sdr(est + 5.0, s), base)  # offsets are removed (zero-mean)


@pytest.mark.parametrize("snr_db", [-10.0, 0.0, 7.5, 20.0])
def test_si_sdr_equals_the_snr_of_an_orthogonal_error(snr_db):
    g = torch.Generator().manual_seed(1)
    s = torch.randn(4, 800, generator=g, dtype=torch.float64)
    n = torch.randn(4, 800, generator=g, dtype=torch.float64)
    s, n = s - s.mean(1, keepdim=True), n - n.mean(1, keepdim=True)
    n = n - (n * s).sum(1, keepdim=True) / s.square().sum(1, keepdim=True) * s  # orthogonal to s
    n = n * (s.norm(dim=1, keepdim=True) / n.norm(dim=1, keepdim=True)) * 10 ** (-snr_db / 20)
    torch.testing.assert_close(A.si_sdr(s + n, s), torch.full((4,), snr_db, dtype=torch.float64))
    # improvement over a mixture that is the truth at 0 dB is snr_db
    mix = s + n * 10 ** (snr_db / 20)
    torch.testing.assert_close(
        A.si_sdr_improvement(s + n, s, mix), torch.full((4,), snr_db, dtype=torch.float64)
    )


def test_si_sdr_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        A.si_sdr(torch.zeros(2, 10), torch.zeros(2, 11))


# ---------------------------------------------------------------- STFT
def test_stft_istft_round_trip_with_the_true_phase():
    x = A.make_mixtures(3, seed=2)["mixture"].double()
    spec = A.stft(x)
    assert spec.shape == (3, A.SPEC_SIZE, A.SPEC_SIZE)
    torch.testing.assert_close(A.istft(spec, x.shape[-1]), x, atol=1e-10, rtol=0)
    torch.testing.assert_close(A.with_phase(spec.abs(), spec, x.shape[-1]), x, atol=1e-10, rtol=0)
    # a sinusoid's energy is in its bin: 1 kHz at 8 kHz with n_fft = 126 is bin 15.75
    t = torch.arange(3969, dtype=torch.float64) / A.SAMPLE_RATE
    mag = A.stft(torch.sin(2 * math.pi * 1000.0 * t)[None]).abs()[0, :, 10:50].mean(1)
    assert int(mag.argmax()) in (15, 16)


def test_log_features_invert_above_the_floor():
    mag = torch.tensor([[0.0, 1e-3, 0.5, 3.0, 250.0]], dtype=torch.float64)
    f = A.log_features(mag)
    assert float(f[0, 0]) == -1.0 and bool((f <= 1).all())
    torch.testing.assert_close(A.feature_magnitude(f), mag)


def test_griffin_lim_reduces_the_spectral_inconsistency():
    x = A.make_mixtures(2, seed=3)["source"].double()
    mag = A.stft(x).abs()
    err = [
        float((A.stft(A.griffin_lim(mag, x.shape[-1], iters=k)).abs() - mag).norm() / mag.norm())
        for k in (0, 30)
    ]
    assert err[1] < 0.5 * err[0]


# ---------------------------------------------------------------- sources and queries
def test_sources_are_reproducible_from_a_seed():
    a, b = A.make_mixtures(5, seed=7), A.make_mixtures(5, seed=7)
    for k in a:
        assert torch.equal(a[k], b[k])
    assert not torch.equal(a["source"], A.make_mixtures(5, seed=8)["source"])
    torch.testing.assert_close(a["source"] + a["interferer"], a["mixture"])
    torch.testing.assert_close(a["mixture"].square().mean(1), torch.ones(5))
    assert bool((a["target_class"] != a["interferer_class"]).all())
    for c in range(3):
        x = A.make_source(c, generator=torch.Generator().manual_seed(c))
        assert x.shape == (A.CLIP_LENGTH,) and abs(float(x.square().mean()) - 1) < 1e-9
        assert torch.equal(x, A.make_source(A.SOURCE_CLASSES[c], generator=torch.Generator().manual_seed(c)))


def test_source_classes_differ_where_they_should():
    g = torch.Generator().manual_seed(0)
    t = torch.arange(A.CLIP_LENGTH) / A.SAMPLE_RATE
    for _ in range(3):  # a chirp's dominant frequency rises over its lifetime
        x = A.make_source("chirp", generator=g)
        mag = A.stft(x[None])[0].abs()
        active = mag.sum(0) > 0.2 * mag.sum(0).max()
        peaks = mag.argmax(0)[active]
        assert int(peaks[-1]) > int(peaks[0])
    with pytest.raises(ValueError, match="harmonic"):
        A.make_source("whistle", generator=g)
    assert t.shape == (A.CLIP_LENGTH,)


def test_query_tokenizer_and_clear_error_on_unknown_words():
    tok = A.QueryTokenizer()
    ids = tok.encode(["rising chirp", "Noise Burst", 2])
    assert ids.shape == (3, 3) and int(ids[2, 0]) == tok.class_token(2) and int(ids[2, 1]) == 0
    with pytest.raises(ValueError, match=r"unknown word\(s\) \['trumpet'\].*vocabulary is: .*chirp"):
        tok.encode(["rising trumpet"])
    with pytest.raises(ValueError, match="class id must be in 0..2"):
        tok.encode([5])
    with pytest.raises(ValueError, match="empty caption"):
        tok.encode([""])
    emb = A.BagOfWords(tok.vocab_size, 4)
    # a bag of words is order-free and ignores padding
    torch.testing.assert_close(emb(tok.encode(["rising chirp"])), emb(tok.encode(["chirp rising"])))
    torch.testing.assert_close(emb(tok.encode(["hiss"])), emb.bag.weight[tok.index["hiss"]][None])


def test_oracle_ideal_ratio_mask_beats_the_mixture():
    d = A.make_mixtures(6, seed=4)
    oracle = A.si_sdr_improvement(
        A.oracle_separation(d["source"], d["interferer"]), d["source"], d["mixture"]
    )
    assert bool((oracle > 10).all())


# ---------------------------------------------------------------- separators and recipes
def test_latent_flow_switches_from_autoencoder_to_flow_and_freezes_stats():
    torch.manual_seed(0)
    sep = A.LatentFlowSeparator(ae_steps=2, ae_channels=(8, 8), channels=8, mults=(1,), query_dim=4)
    d = A.make_mixtures(4, seed=0)
    q = A.random_queries(d["target_class"], "mixed", generator=torch.Generator().manual_seed(0))
    batch = (d["source"], d["mixture"], q)
    sep.loss(batch).backward()
    assert sep.fm.net.inp.weight.grad is None and sep.ae.encoder[0].weight.grad is not None
    sep.zero_grad()
    sep.loss(batch)
    assert torch.equal(sep.latent_std, torch.ones(4))  # still the autoencoder phase
    sep.loss(batch).backward()  # first flow step: stats frozen, only flow + query get gradients
    assert not torch.equal(sep.latent_std, torch.ones(4)) and int(sep.steps_done) == 3
    assert sep.fm.net.inp.weight.grad is not None and sep.query.bag.weight.grad is not None
    assert sep.ae.encoder[0].weight.grad is None
    std = sep.latent_std.clone()
    e = A.make_mixtures(4, seed=1)
    sep.loss((e["source"], e["mixture"], q))  # another batch: the stats stay frozen
    assert torch.equal(sep.latent_std, std)
    with pytest.raises(ValueError, match="unknown phase"):
        sep.separate(d["mixture"], q, steps=1, phase="vocoder")
    with pytest.raises(ValueError, match="draws must be >= 1"):
        sep.separate(d["mixture"], q, steps=1, draws=0)
    g = torch.Generator().manual_seed(0)
    one = sep.separate(d["mixture"], q, steps=1, draws=2, clamp=True, generator=g)
    assert one.shape == d["mixture"].shape and bool(torch.isfinite(one).all())


def test_recipes_train_a_few_steps_and_evaluate(tmp_path):
    from flowforge.recipes import evaluate, get_recipe, sample, train_recipe

    over = {"n_train": 16, "ae_steps": 2, "eval_n": 4}
    train_recipe("audio-sep", overrides=over, out=tmp_path / "flow", steps=3, progress=False)
    res = evaluate(tmp_path / "flow", steps=2)
    assert set(get_recipe("audio-sep").metrics) <= set(res)
    assert res["si_sdri_oracle"] > 10 and res["si_sdri_autoencoder"] is not None
    assert abs(res["si_sdri"] - 0.5 * (res["si_sdri_class"] + res["si_sdri_caption"])) < 1e-9
    assert sample(tmp_path / "flow", 2, steps=2).shape == (2, A.CLIP_LENGTH)
    train_recipe("audio-sep-mask", overrides=over, out=tmp_path / "mask", steps=2, progress=False)
    res = evaluate(tmp_path / "mask")
    assert res["si_sdri_autoencoder"] is None and math.isfinite(res["si_sdri_caption"])
    with pytest.raises(ValueError, match="ae_steps"):
        train_recipe(
            "audio-sep", overrides={**over, "ae_steps": 5}, out=tmp_path / "x", steps=3, progress=False
        )


def test_energy_weighted_autoencoder_loss_reduces_to_the_plain_one_on_flat_spectra():
    sep = A.LatentFlowSeparator(
        ae_channels=(8, 8), channels=8, mults=(1,), query_dim=4, ae_weighting="energy"
    )
    flat = torch.full((2, 1, A.SPEC_SIZE, A.SPEC_SIZE), 0.3)  # equal magnitudes: every weight is 1
    torch.manual_seed(0)
    weighted = sep._weighted_ae_loss(flat)
    torch.manual_seed(0)
    torch.testing.assert_close(weighted, sep.ae.loss(flat))
    loud = flat.clone()
    loud[..., :4, :] = 0.9  # loud bins weigh more than quiet ones
    torch.manual_seed(0)
    assert float(sep._weighted_ae_loss(loud).detach()) != float(sep.ae.loss(loud).detach())
    with pytest.raises(ValueError, match="unknown ae_weighting"):
        A.LatentFlowSeparator(ae_weighting="loud")
