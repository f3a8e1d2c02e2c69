"""Tests for flowforge.data: toy 2-D sets, array loading, finiteness checks, standardisation."""

from __future__ import annotations

import dataclasses
import doctest
import importlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from flowforge.data import TOY2D_NAMES, Standardizer, check_finite, load_array, toy2d
from flowforge.metrics import sliced_wasserstein


@pytest.mark.parametrize("module", ["flowforge.data.toy2d", "flowforge.data.arrays"])
def test_docstring_examples_run(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# --------------------------------------------------------------------------------------------- toy2d


def test_toy2d_names() -> None:
    assert set(TOY2D_NAMES) == {"moons", "eight-gaussians", "checkerboard", "spirals", "circles"}


@pytest.mark.parametrize("name", TOY2D_NAMES)
def test_toy2d_shape_dtype_and_seed(name: str) -> None:
    x = toy2d(name, 513, seed=3)
    assert x.shape == (513, 2) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert torch.equal(x, toy2d(name, 513, seed=3))
    assert torch.equal(x, toy2d(name, 513, generator=torch.Generator().manual_seed(3)))
    assert not torch.allclose(x, toy2d(name, 513, seed=4))
    x64 = toy2d(name, 7, seed=0, dtype=torch.float64)
    assert x64.dtype == torch.float64 and x64.shape == (7, 2)
    assert toy2d(name, 0, seed=0).shape == (0, 2)


def test_toy2d_errors() -> None:
    with pytest.raises(ValueError) as err:
        toy2d("swissroll", 10)
    for name in TOY2D_NAMES:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="not both"):
        toy2d("moons", 10, seed=0, generator=torch.Generator())
    with pytest.raises(ValueError, match="n >= 0"):
        toy2d("moons", -1)
    with pytest.raises(ValueError, match=">= 0"):
        toy2d("moons", 5, noise=-0.1)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"finite.*; write e\.g\. noise=0\.05"):
            toy2d("moons", 5, noise=bad)
    with pytest.raises(ValueError, match="did you mean 'moons'"):
        toy2d("moonz", 5)
    with pytest.raises(ValueError, match="integer n"):
        toy2d("moons", 2.5)


def test_moons_geometry_without_noise() -> None:
    x = toy2d("moons", 4000, noise=0.0, seed=0, dtype=torch.float64)
    outer = (x.norm(dim=1) - 1).abs() < 1e-9
    inner = ((x - torch.tensor([1.0, 0.5], dtype=torch.float64)).norm(dim=1) - 1).abs() < 1e-9
    assert bool((outer | inner).all())
    assert bool((x[outer & ~inner, 1] >= 0).all()) and bool((x[inner & ~outer, 1] <= 0.5).all())
    assert abs(outer.double().mean().item() - 0.5) < 0.04
    # theta uniform on [0, pi]: the outer moon's x = cos(theta) has mean 0, |x| spread over [-1, 1]
    assert abs(x[outer & ~inner, 0].mean().item()) < 0.05


def test_moons_matches_sklearn_in_distribution() -> None:
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    # sklearn places theta on a linspace, so two make_moons draws of one size are far closer than two
    # i.i.d. samples; i.i.d. sklearn samples are drawn as random subsets of one very large make_moons set.
    n = 3000
    big = torch.from_numpy(sklearn_datasets.make_moons(300_000, noise=0.05, random_state=0)[0]).float()

    def sk(seed: int) -> torch.Tensor:
        return big[torch.randperm(len(big), generator=torch.Generator().manual_seed(seed))[:n]]

    def swd(a: torch.Tensor, b: torch.Tensor) -> float:
        return sliced_wasserstein(a, b, n_projections=128, generator=torch.Generator().manual_seed(0))

    ours, between_sklearn, shifted = [], [], []
    for rep in range(3):
        ref = sk(100 + rep)
        x = toy2d("moons", n, seed=rep)
        ours.append(swd(x, ref))
        between_sklearn.append(swd(sk(200 + rep), ref))
        shifted.append(swd(x + torch.tensor([0.1, 0.0]), ref))
    baseline = float(np.mean(between_sklearn))
    assert float(np.mean(ours)) < 1.5 * baseline
    # the comparison has the resolution to see a 0.1 shift of the whole set
    assert float(np.mean(shifted)) > 1.5 * baseline


def test_eight_gaussians_centres_and_std() -> None:
    x = toy2d("eight-gaussians", 8000, noise=0.0, seed=1, dtype=torch.float64)
    assert torch.allclose(x.norm(dim=1), torch.full((8000,), 2.0, dtype=torch.float64))
    centres = 2.0 * torch.tensor(
        [[math.cos(k * math.pi / 4), math.sin(k * math.pi / 4)] for k in range(8)], dtype=torch.float64
    )
    dist, k = torch.cdist(x, centres).min(dim=1)
    assert bool((dist < 1e-9).all())
    counts = torch.bincount(k, minlength=8).double()
    assert ((counts / 8000 - 1 / 8).abs() < 0.02).all()
    xn = toy2d("eight-gaussians", 8000, seed=1, dtype=torch.float64)  # same centres, then the noise
    resid = xn - x
    assert abs(resid.std().item() - 0.1) < 0.005


def test_checkerboard_cells() -> None:
    x = toy2d("checkerboard", 8000, seed=2)
    assert bool((x >= -2).all()) and bool((x < 2).all())
    cells = torch.floor(x).long() + 2  # 0..3
    assert bool(((cells[:, 0] + cells[:, 1]) % 2 == 0).all())
    counts = torch.bincount(cells[:, 0] * 4 + cells[:, 1], minlength=16).double()
    filled = counts[counts > 0]
    assert len(filled) == 8 and ((filled / 8000 - 1 / 8).abs() < 0.02).all()


def test_spirals_and_circles_geometry() -> None:
    s = toy2d("spirals", 4000, noise=0.0, seed=0, dtype=torch.float64)
    phi = 3 * s.norm(dim=1)  # radius = phi / 3
    assert bool((phi <= 3 * math.pi + 1e-9).all())
    # each point is (-phi cos phi, phi sin phi)/3 or its negative
    p = torch.stack([-torch.cos(phi) * phi, torch.sin(phi) * phi], dim=1) / 3
    assert bool(torch.minimum((s - p).norm(dim=1), (s + p).norm(dim=1)).max() < 1e-9)
    c = toy2d("circles", 4000, noise=0.0, seed=0, dtype=torch.float64)
    r = c.norm(dim=1)
    assert bool(torch.minimum((r - 1).abs(), (r - 0.5).abs()).max() < 1e-9)
    assert abs(((r - 1).abs() < 1e-9).double().mean().item() - 0.5) < 0.04


# ------------------------------------------------------------------------------------------ load_array


@pytest.fixture
def arr() -> np.ndarray:
    return np.arange(12, dtype=np.float64).reshape(6, 2) / 7.0


def _expect(t: torch.Tensor, a: np.ndarray) -> None:
    assert t.dtype == torch.float32 and t.shape == a.shape
    assert torch.equal(t, torch.from_numpy(a.astype(np.float32)))


def test_load_npy_npz_safetensors_round_trip(tmp_path, arr) -> None:
    from safetensors.torch import save_file

    np.save(tmp_path / "a.npy", arr)
    _expect(load_array(tmp_path / "a.npy"), arr)
    np.savez(tmp_path / "single.npz", whatever=arr)
    _expect(load_array(tmp_path / "single.npz"), arr)
    np.savez(tmp_path / "keyed.npz", labels=np.zeros(6), x=arr)
    _expect(load_array(str(tmp_path / "keyed.npz")), arr)
    np.savez(tmp_path / "pos.npz", arr, np.zeros(3))  # arr_0, arr_1
    _expect(load_array(tmp_path / "pos.npz"), arr)
    save_file({"samples": torch.from_numpy(arr)}, str(tmp_path / "one.safetensors"))
    _expect(load_array(tmp_path / "one.safetensors"), arr)
    save_file({"data": torch.from_numpy(arr), "y": torch.zeros(6)}, str(tmp_path / "keyed.safetensors"))
    _expect(load_array(tmp_path / "keyed.safetensors"), arr)
    save_file({"x": torch.from_numpy(arr).to(torch.bfloat16)}, str(tmp_path / "bf16.safetensors"))
    assert load_array(tmp_path / "bf16.safetensors").dtype == torch.float32
    np.save(tmp_path / "ints.npy", np.arange(6).reshape(3, 2))
    _expect(load_array(tmp_path / "ints.npy"), np.arange(6).reshape(3, 2))
    np.save(tmp_path / "f32max.npy", np.full((2, 2), np.finfo(np.float32).max, dtype=np.float64))
    assert torch.isfinite(load_array(tmp_path / "f32max.npy")).all()


def test_load_csv_round_trip(tmp_path, arr) -> None:
    np.savetxt(tmp_path / "plain.csv", arr, delimiter=",", fmt="%.17g")
    _expect(load_array(tmp_path / "plain.csv"), arr)
    np.savetxt(tmp_path / "header.csv", arr, delimiter=",", fmt="%.17g", header="a,b", comments="")
    _expect(load_array(tmp_path / "header.csv"), arr)
    (tmp_path / "col.csv").write_text("v\n1\n2\n3\n")
    assert load_array(tmp_path / "col.csv").shape == (3, 1)


class _Trap:
    """Unpickling this object touches ``marker``: proof that a loader ran code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickles_are_never_unpickled(tmp_path, monkeypatch) -> None:
    import pickle

    marker = tmp_path / "code-ran"
    trap = _Trap(marker)
    torch.save({"x": torch.zeros(3, 2), "trap": trap}, tmp_path / "a.pt")
    torch.save(torch.zeros(3, 2), tmp_path / "b.pth")
    (tmp_path / "c.pkl").write_bytes(pickle.dumps(trap))
    (tmp_path / "d.npy").write_bytes(pickle.dumps(trap))  # a pickle under a .npy name
    np.save(tmp_path / "e.npy", np.array([[trap, 1.0]], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "f.npz", x=np.array([[trap, 1.0]], dtype=object))

    def refuse(*args, **kwargs):
        raise AssertionError("load_array must never unpickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    expected = {
        "a.pt": r"pickle.*never unpickles.*numpy\.save.*safetensors",
        "b.pth": r"pickle.*numpy\.save.*safetensors",
        "c.pkl": r"pickle.*numpy\.save.*safetensors",
        "d.npy": r"not a \.npy file",
        "e.npy": r"Python objects.*never unpickles",
        "f.npz": r"Python objects.*never unpickles",
    }
    for name, pattern in expected.items():
        with pytest.raises(ValueError, match=pattern):
            load_array(tmp_path / name)
    assert not marker.exists()
    monkeypatch.undo()
    pickle.loads((tmp_path / "c.pkl").read_bytes())  # the trap works: unpickling it runs code
    assert marker.exists()


def test_load_errors(tmp_path, arr) -> None:
    from safetensors.torch import save_file

    missing = tmp_path / "nope.npy"
    with pytest.raises(FileNotFoundError, match="nope.npy"):
        load_array(missing)
    (tmp_path / "a.txt").write_text("1,2\n")
    with pytest.raises(ValueError, match=r"\.txt") as err:
        load_array(tmp_path / "a.txt")
    for ext in (".npy", ".npz", ".safetensors", ".csv"):
        assert ext in str(err.value)
    (tmp_path / "dir.npy").mkdir()
    with pytest.raises(ValueError, match="directory"):
        load_array(tmp_path / "dir.npy")
    for ext in (".npy", ".npz", ".csv", ".safetensors"):
        (tmp_path / f"zero{ext}").write_bytes(b"")
        with pytest.raises(ValueError, match=r"empty \(0 bytes\)"):
            load_array(tmp_path / f"zero{ext}")
    np.save(tmp_path / "flat.npy", np.arange(5.0))
    with pytest.raises(ValueError, match=r"1-D.*\(N, 1\)"):
        load_array(tmp_path / "flat.npy")
    np.save(tmp_path / "img.npy", np.zeros((4, 3, 2)))
    with pytest.raises(ValueError, match=r"\(4, 3, 2\).*expected \(N, D\)"):
        load_array(tmp_path / "img.npy")
    np.save(tmp_path / "cut.npy", np.zeros((100, 2)))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "cut.npy").read_bytes()[:300])
    with pytest.raises(ValueError, match=r"truncated.*\(100, 2\)"):
        load_array(tmp_path / "cut.npy")
    np.savez(tmp_path / "z.npz", x=arr)
    (tmp_path / "z.npy").write_bytes((tmp_path / "z.npz").read_bytes())
    with pytest.raises(ValueError, match=r"rename it to \.npz"):
        load_array(tmp_path / "z.npy")
    (tmp_path / "cut.npz").write_bytes((tmp_path / "z.npz").read_bytes()[:50])
    with pytest.raises(ValueError, match=r"not a readable \.npz"):
        load_array(tmp_path / "cut.npz")
    np.save(tmp_path / "str.npy", np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(ValueError, match="non-numeric"):
        load_array(tmp_path / "str.npy")
    np.save(tmp_path / "cplx.npy", np.ones((3, 2), dtype=np.complex128))
    with pytest.raises(ValueError, match=r"complex.*x\.real, x\.imag"):
        load_array(tmp_path / "cplx.npy")
    np.save(tmp_path / "bool.npy", np.ones((3, 2), dtype=bool))
    with pytest.raises(ValueError, match=r"booleans.*astype\(np\.float32\)"):
        load_array(tmp_path / "bool.npy")
    save_file({"x": torch.ones(3, 2, dtype=torch.bool)}, str(tmp_path / "bool.safetensors"))
    with pytest.raises(ValueError, match="booleans"):
        load_array(tmp_path / "bool.safetensors")
    big = np.ones((3, 2))
    big[2, 1] = -1e39
    np.save(tmp_path / "big.npy", big)
    with pytest.raises(ValueError, match=r"up to 1e\+39 \(first in row 2\).*float32.*rescale"):
        load_array(tmp_path / "big.npy")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n3,oops\n")
    with pytest.raises(ValueError, match=r"line 3 is not numeric"):
        load_array(tmp_path / "bad.csv")
    (tmp_path / "ragged.csv").write_text("1,2\n3\n")
    with pytest.raises(ValueError, match="columns"):
        load_array(tmp_path / "ragged.csv")
    (tmp_path / "head.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="only a header row.*add one row"):
        load_array(tmp_path / "head.csv")
    np.save(tmp_path / "empty.npy", np.zeros((0, 3)))
    with pytest.raises(ValueError, match="empty"):
        load_array(tmp_path / "empty.npy")
    (tmp_path / "empty.csv").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        load_array(tmp_path / "empty.csv")
    np.savez(tmp_path / "amb.npz", a=arr, b=arr)
    with pytest.raises(ValueError, match=r"\['a', 'b'\].*'x'"):
        load_array(tmp_path / "amb.npz")
    np.savez(tmp_path / "none.npz")
    with pytest.raises(ValueError, match=r"no arrays.*np\.savez"):
        load_array(tmp_path / "none.npz")
    save_file({"a": torch.zeros(2, 2), "b": torch.zeros(2, 2)}, str(tmp_path / "amb.safetensors"))
    with pytest.raises(ValueError, match=r"\['a', 'b'\]"):
        load_array(tmp_path / "amb.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    with pytest.raises(ValueError, match=r"not a readable safetensors file.*save_file"):
        load_array(tmp_path / "junk.safetensors")


def test_safetensors_without_the_package(tmp_path, monkeypatch) -> None:
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(3, 2)}, str(tmp_path / "a.safetensors"))
    monkeypatch.setitem(sys.modules, "safetensors", None)  # import safetensors now raises ImportError
    with pytest.raises(ValueError, match=r"needs the safetensors package; pip install"):
        load_array(tmp_path / "a.safetensors")


def test_load_errors_tell_what_to_write_instead(tmp_path) -> None:
    """Every message has the shape ``<what was wrong>; <what to write instead>``."""
    cases = {"a.pt": b"x", "a.txt": b"1", "a": b"1", "zero.npy": b"", "bad.csv": b"1,2\n3,x\n"}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match="; ") as err:
            load_array(tmp_path / name)
        assert "\n" not in str(err.value)


def test_standardizer_fits_data_near_float32_limits() -> None:
    x = torch.tensor([[1e30, -1e30], [2e30, 1e30], [-1e30, 3e30], [0.0, 1e30]])
    s = Standardizer.fit(x)  # the variance (~1e60) overflows float32; the fit runs in float64
    assert s.std.dtype == torch.float32 and torch.isfinite(s.std).all()
    z = s.forward(x)
    assert torch.isfinite(z).all() and abs(float(z.std(0, correction=0).mean()) - 1.0) < 1e-5
    torch.testing.assert_close(s.inverse(z), x, rtol=1e-5, atol=0.0)
    with pytest.raises(ValueError, match=r"overflows torch.float64; rescale"):
        Standardizer.fit(torch.tensor([[1e160], [-1e160]], dtype=torch.float64))


# ---------------------------------------------------------------------------------------- check_finite


def test_check_finite_names_first_bad_row() -> None:
    x = torch.randn(40, 3)
    assert check_finite(x) is x
    x[17, 1] = float("nan")
    x[30, 0] = float("inf")
    with pytest.raises(ValueError, match=r"^data row 17 holds nan: \[.*nan.*\]; remove or impute it"):
        check_finite(x)
    x[17, 1] = 0.0
    with pytest.raises(ValueError, match=r"^samples row 30 holds inf"):
        check_finite(x, what="samples")
    with pytest.raises(ValueError, match="row 0"):
        check_finite(torch.tensor(float("-inf")))


# ----------------------------------------------------------------------------------------- Standardizer


def test_standardizer_round_trip_and_moments() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 4, generator=g, dtype=torch.float64) * torch.tensor([0.1, 1.0, 10.0, 3.0]) + 5.0
    s = Standardizer.fit(x)
    z = s.forward(x)
    assert torch.allclose(z.mean(0), torch.zeros(4, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(z.std(0, correction=0), torch.ones(4, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(s.inverse(z), x, atol=1e-12)
    assert torch.equal(s(x), z)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.mean = torch.zeros(4)  # type: ignore[misc]


def test_standardizer_log_det_matches_autograd_jacobian() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 3, generator=g, dtype=torch.float64) * torch.tensor([0.5, 2.0, 7.0]) - 1.0
    s = Standardizer.fit(x)
    ld = s.log_det(x)
    assert ld.shape == (50,)
    for i in (0, 13):
        jac = torch.autograd.functional.jacobian(lambda v: s.forward(v[None])[0], x[i])
        assert torch.allclose(ld[i], torch.linalg.slogdet(jac).logabsdet, atol=1e-12)
    # change of variables: log N(z; 0, I) + log_det == log N(x; mean, diag(std^2))
    normal = torch.distributions.Normal(torch.zeros(3, dtype=torch.float64), 1.0)
    lhs = normal.log_prob(s.forward(x)).sum(1) + ld
    rhs = torch.distributions.Normal(s.mean, s.std).log_prob(x).sum(1)
    assert torch.allclose(lhs, rhs, atol=1e-10)


def test_standardizer_json_and_constant_column() -> None:
    x = torch.cat([torch.randn(20, 2), torch.full((20, 1), 3.0)], dim=1)
    s = Standardizer.fit(x)
    assert s.std[2].item() == 1.0 and torch.allclose(s.forward(x)[:, 2], torch.zeros(20))
    s2 = Standardizer.from_dict(json.loads(json.dumps(s.to_dict())))
    assert torch.equal(s2.mean, s.mean) and torch.equal(s2.std, s.std)
    with pytest.raises(ValueError, match="std"):
        Standardizer(mean=torch.zeros(2), std=torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="row 1"):
        Standardizer.fit(torch.tensor([[0.0], [float("nan")]]))
