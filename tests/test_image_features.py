"""Image metrics: the shipped classifiers (accuracy, sha256 check), image_metrics and its errors, the
fitted-Gaussian baseline, SmallCNN, and the InceptionV3 FID path (real-weight tests skip without them)."""

from __future__ import annotations

import doctest
import importlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from flowforge.data import load_digits, load_mnist
from flowforge.metrics import (
    classifier_features,
    fid,
    fitted_gaussian_samples,
    image_metrics,
    inception_features,
    load_classifier,
)
from flowforge.metrics.image_features import CLASSIFIERS, WEIGHTS_DIR
from flowforge.metrics.inception import FID_WEIGHTS_URL, FIDInceptionV3, find_inception_weights
from flowforge.nn import SmallCNN

image_features_mod = importlib.import_module("flowforge.metrics.image_features")
inception_mod = importlib.import_module("flowforge.metrics.inception")

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
needs_mnist = pytest.mark.skipif(not MNIST.is_dir(), reason=f"MNIST files not found at {MNIST}")


def to_float(q: torch.Tensor, levels: int) -> torch.Tensor:
    return 2 * q.float() / (levels - 1) - 1


@pytest.fixture(scope="module")
def digits_test() -> tuple[torch.Tensor, torch.Tensor]:
    s = load_digits("test")
    return to_float(s.x, s.levels), s.y


@pytest.mark.parametrize(
    "module", ["flowforge.nn.classifier", "flowforge.metrics.image_features", "flowforge.metrics.inception"]
)
def test_docstring_examples_run(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# ------------------------------------------------------------------------------ shipped classifiers


@needs_mnist
def test_mnist_classifier_accuracy() -> None:
    s = load_mnist(MNIST, "test", download=False)
    x, y = to_float(s.x[:2000], s.levels), s.y[:2000]
    assert image_metrics(x, None, dataset="mnist", metrics=("acc",), labels=y)["acc"] >= 0.99


def test_digits_classifier_accuracy(digits_test) -> None:
    x, y = digits_test
    acc = image_metrics(x, None, dataset="digits", metrics="acc", labels=y)["acc"]
    assert acc >= 0.97
    config = json.loads((WEIGHTS_DIR / "digits_classifier.json").read_text())
    assert acc == pytest.approx(config["test_accuracy"], abs=1e-4)  # the number the JSON reports


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_shipped_files(name: str) -> None:
    weights = WEIGHTS_DIR / f"{name}_classifier.safetensors"
    assert weights.stat().st_size < 2_000_000
    config = json.loads((WEIGHTS_DIR / f"{name}_classifier.json").read_text())
    assert {"kwargs", "test_accuracy", "train_command", "reference"} <= set(config)
    assert {"real", "fitted_gaussian"} == set(config["reference"])
    assert config["reference"]["real"]["fd"] < config["reference"]["fitted_gaussian"]["fd"]
    net = load_classifier(name)
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    assert net.config() == config["kwargs"]


def test_damaged_weights_are_refused(tmp_path: Path) -> None:
    for f in WEIGHTS_DIR.glob("digits_classifier.*"):
        shutil.copy(f, tmp_path / f.name)
    assert load_classifier("digits", root=tmp_path).num_classes == 10  # the intact copy loads
    path = tmp_path / "digits_classifier.safetensors"
    blob = bytearray(path.read_bytes())
    blob[-10] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match=r"digits_classifier\.safetensors is damaged.*reinstall"):
        load_classifier("digits", root=tmp_path)
    path.unlink()
    with pytest.raises(
        FileNotFoundError, match=r"digits_classifier\.safetensors not found.*train_image_classifier"
    ):
        load_classifier("digits", root=tmp_path)


def test_unknown_classifier_name() -> None:
    with pytest.raises(ValueError, match="did you mean 'mnist'"):
        load_classifier("mnsit")


# ------------------------------------------------------------------------------------- image_metrics


def test_image_metrics_on_real_and_fitted_gaussian(digits_test) -> None:
    x, y = digits_test
    real = image_metrics(x[:180], x[180:], dataset="digits", labels=y[:180])
    assert set(real) == {"fd", "acc", "precision", "recall"}
    assert real["acc"] > 0.95 and real["precision"] > 0.6 and real["recall"] > 0.6
    train = to_float(load_digits("train").x, 17)
    gauss = fitted_gaussian_samples(train, 180, torch.Generator().manual_seed(0))
    fake = image_metrics(gauss, x[180:], dataset="digits", metrics=("fd", "pr"))
    assert set(fake) == {"fd", "precision", "recall"}
    assert fake["fd"] > 5 * real["fd"]


def test_identical_images_give_zero_fd_and_full_precision_recall(digits_test) -> None:
    x, _ = digits_test
    m = image_metrics(x, x.clone(), dataset="digits", metrics=("fd", "pr"), batch_size=64)
    assert m["fd"] == pytest.approx(0.0, abs=1e-6)
    assert m["precision"] == 1.0 and m["recall"] == 1.0


def test_small_overshoots_are_clipped(digits_test) -> None:
    x, _ = digits_test
    bumped = torch.where(x == -1, -1.3, x)  # a sampler that overshoots [-1, 1] a little
    assert classifier_features(bumped, dataset="digits").equal(classifier_features(x, dataset="digits"))


def test_own_classifier_keeps_its_mode(digits_test) -> None:
    x, y = digits_test
    net = SmallCNN(image_size=8, width=4, feature_dim=8).train()
    m = image_metrics(x[:50], x[50:100], classifier=net, labels=y[:50])
    assert net.training and set(m) == {"fd", "acc", "precision", "recall"}


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"samples": "3d"}, ValueError, r"unsqueeze\(1\)"),
        ({"samples": "nan"}, ValueError, "NaN or inf values in 1 of"),
        ({"samples": "255"}, ValueError, "far outside"),
        ({"samples": "uint8"}, TypeError, r"2 \* x.float\(\) / \(levels - 1\) - 1"),
        ({"samples": "28x28"}, ValueError, r"\(N, 1, 8, 8\)"),
        ({"metrics": ("fd", "fid")}, ValueError, "unknown image metric 'fid'"),
        ({"metrics": ()}, ValueError, "metrics is empty"),
        ({"labels": None}, ValueError, "'acc' needs labels"),
        ({"labels": "null"}, ValueError, "null"),
        ({"labels": "short"}, ValueError, "labels must be integer classes of shape"),
        ({"reference": None}, ValueError, "pass reference="),
        ({"reference": "nan"}, ValueError, "reference has NaN"),
        ({"dataset": None}, ValueError, "exactly one of dataset="),
        ({"classifier": "extra"}, ValueError, "exactly one of dataset="),
        ({"dataset": "cifar"}, ValueError, "unknown classifier 'cifar'"),
        ({"batch_size": 0}, ValueError, "batch_size"),
    ],
)
def test_image_metrics_bad_inputs(digits_test, kwargs, error, match) -> None:
    x, y = digits_test
    args = {"samples": x[:20], "reference": x[20:40], "dataset": "digits", "labels": y[:20]}
    args.update(kwargs)
    bad_images = {
        "3d": x[:20, 0],
        "nan": x[:20].clone().index_put_((torch.tensor([3]),), torch.tensor(float("nan"))),
        "255": (x[:20] + 1) * 127.5,
        "uint8": load_digits("test").x[:20],
        "28x28": torch.zeros(20, 1, 28, 28),
    }
    for key in ("samples", "reference"):
        if isinstance(args[key], str):
            args[key] = bad_images[args[key]]
    labels = {"null": torch.full((20,), 10), "short": y[:5]}
    if isinstance(args["labels"], str):
        args["labels"] = labels[args["labels"]]
    if args.get("classifier") == "extra":
        args["classifier"] = SmallCNN(image_size=8)
    samples, reference = args.pop("samples"), args.pop("reference")
    with pytest.raises(error, match=match):
        image_metrics(samples, reference, **args)


# ---------------------------------------------------------------------------------- fitted Gaussian


def test_fitted_gaussian_matches_the_training_moments() -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(2000, 4, generator=g, dtype=torch.float64) @ torch.tensor(
        [[0.2, 0.0, 0.0, 0.0], [0.1, 0.1, 0.0, 0.0], [0.0, 0.05, 0.15, 0.0], [0.0, 0.0, 0.0, 0.0]],
        dtype=torch.float64,
    )
    train = (base + 0.1).reshape(2000, 1, 2, 2).float()  # well inside [-1, 1]; pixel 4 is constant
    s = fitted_gaussian_samples(train, 20_000, torch.Generator().manual_seed(1))
    assert s.shape == (20_000, 1, 2, 2) and s.dtype == torch.float32
    flat, ref = s.flatten(1).double(), train.flatten(1).double()
    assert torch.allclose(flat.mean(0), ref.mean(0), atol=0.01)
    assert torch.allclose(torch.cov(flat.T), torch.cov(ref.T), atol=0.002)
    assert flat[:, 3].eq(ref[0, 3]).all()  # zero-variance pixels stay put
    again = fitted_gaussian_samples(train, 20_000, torch.Generator().manual_seed(1))
    assert again.equal(s)


def test_fitted_gaussian_is_clipped_and_checks_inputs() -> None:
    train = torch.rand(30, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    s = fitted_gaussian_samples(train, 500, torch.Generator().manual_seed(0))
    assert s.min() >= -1 and s.max() <= 1 and (s.abs() == 1).any()
    with pytest.raises(TypeError, match="integer pixels"):
        fitted_gaussian_samples(load_digits("test").x, 5)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        fitted_gaussian_samples(train[:, 0], 5)
    with pytest.raises(ValueError, match="positive integer"):
        fitted_gaussian_samples(train, 0)


# ------------------------------------------------------------------------------------------ SmallCNN


def test_small_cnn_shapes_and_errors() -> None:
    net = SmallCNN()
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert net.features(torch.zeros(2, 1, 28, 28)).shape == (2, 128)
    assert SmallCNN(**net.config()).config() == net.config()
    with pytest.raises(ValueError, match="image_size >= 8"):
        SmallCNN(image_size=4)
    with pytest.raises(ValueError, match=r"unsqueeze\(1\)"):
        net(torch.zeros(2, 28, 28))


# -------------------------------------------------------------------------------- InceptionV3 / FID


@pytest.fixture()
def no_default_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("FLOWFORGE_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(inception_mod, "_CACHE", {})
    return tmp_path


def test_missing_inception_weights_say_where_to_get_them(no_default_weights: Path) -> None:
    with pytest.raises(FileNotFoundError, match=FID_WEIGHTS_URL.replace(".", r"\.")):
        inception_features(torch.zeros(1, 1, 8, 8))
    with pytest.raises(FileNotFoundError, match="never downloads"):
        fid(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8))
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        inception_features(torch.zeros(1, 1, 8, 8), weights=no_default_weights / "nowhere.pth")


def test_inception_layout_matches_pytorch_fid() -> None:
    keys = FIDInceptionV3().state_dict()
    # pytorch-fid's file has these 564 entries plus fc.weight and fc.bias (checked against pytorch-fid 0.3.0)
    assert len(keys) == 564
    assert keys["Mixed_7c.branch3x3dbl_3b.conv.weight"].shape == (384, 384, 3, 1)
    assert keys["Mixed_6e.branch7x7dbl_5.conv.weight"].shape == (192, 192, 1, 7)
    assert keys["Conv2d_1a_3x3.bn.running_var"].shape == (32,)


def test_inception_weights_round_trip(no_default_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    net = FIDInceptionV3().eval()
    state = dict(net.state_dict())
    state["fc.weight"], state["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)  # ignored on load
    path = no_default_weights / "converted.pth"
    torch.save(state, path)
    x = torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with pytest.raises(ValueError, match="sha256 starts"):
        inception_features(x, weights=path)
    monkeypatch.setenv("FLOWFORGE_INCEPTION_WEIGHTS", str(path))  # found without weights=
    feats = inception_features(x, check_hash=False, quantize=False)
    with torch.no_grad():
        x299 = torch.nn.functional.interpolate(
            x.expand(-1, 3, -1, -1), size=(299, 299), mode="bilinear", align_corners=False
        )
        want = net(x299)
    assert feats.shape == (2, 2048)
    assert torch.allclose(feats, want, rtol=1e-4, atol=1e-6)
    torch.save({"conv.weight": torch.zeros(1)}, no_default_weights / "other.pth")
    with pytest.raises(ValueError, match="not an InceptionV3 state dict"):
        inception_features(x, weights=no_default_weights / "other.pth", check_hash=False)


def test_fid_with_the_real_weights() -> None:
    try:
        find_inception_weights()
    except FileNotFoundError:
        pytest.skip(f"InceptionV3 FID weights not installed (get them from {FID_WEIGHTS_URL})")
    x = to_float(load_digits("test").x[:20], 17)
    feats = inception_features(x)
    assert feats.shape == (20, 2048) and torch.isfinite(feats).all() and (feats >= 0).all()
    assert fid(x, x) == pytest.approx(0.0, abs=1e-2)
    noise = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert fid(noise, x) > 10
