"""Alanine dipeptide: OpenMM energy in kT, forces as gradients, φ/ψ, the cached MD sampler, internal
coordinates (round trip, log-Jacobian against autograd, the energy over them) and the ``aldp-bg`` recipe.

Skips (with the reason) when OpenMM or ../shared/data/alanine_dipeptide is absent; the pure-torch geometry
tests run everywhere.
"""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from flowforge.data.aldp import (
    ALDP_TORSION_SHIFT,
    ALDP_ZMATRIX,
    PHI_ATOMS,
    PSI_ATOMS,
    InternalCoordinates,
    com_free_basis,
    dihedral,
    phi_psi,
    remove_com,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alanine_dipeptide"
HAVE_OPENMM = importlib.util.find_spec("openmm") is not None
needs_openmm = pytest.mark.skipif(
    not HAVE_OPENMM, reason="OpenMM is not installed (pip install 'flowforge[aldp]')"
)
needs_data = pytest.mark.skipif(
    not (DATA / "alanine-dipeptide.prmtop").is_file(),
    reason=f"alanine dipeptide files not found at {DATA}",
)


# ----------------------------------------------------------------------------- pure torch geometry


def _dihedral_by_projection(p: np.ndarray) -> float:
    """Independent hand computation: project b1 and b3 on the plane normal to b2, signed angle between them."""
    b1, b2, b3 = p[1] - p[0], p[2] - p[1], p[3] - p[2]
    u = b2 / np.linalg.norm(b2)
    v = -b1 - np.dot(-b1, u) * u
    w = b3 - np.dot(b3, u) * u
    return math.atan2(np.dot(np.cross(u, v), w), np.dot(v, w))


@pytest.mark.parametrize("deg", [-170.0, -90.0, -60.0, 0.0, 45.0, 120.0, 180.0])
def test_dihedral_known_angles_iupac_sign(deg):
    # A on +x, B at origin, C on +z, D rotated by +deg about z: IUPAC torsion is +deg
    th = math.radians(deg)
    x = torch.tensor([[1.0, 0, 0, 0, 0, 0, 0, 0, 1, math.cos(th), math.sin(th), 1]], dtype=torch.float64)
    got = dihedral(x, (0, 1, 2, 3)).item()
    assert math.isclose(math.cos(got), math.cos(th), abs_tol=1e-12)
    assert math.isclose(math.sin(got), math.sin(th), abs_tol=1e-12)


def test_dihedral_matches_projection_formula_and_is_rigid_invariant():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 12, generator=g, dtype=torch.float64)
    got = dihedral(x, (0, 1, 2, 3))
    ref = torch.tensor([_dihedral_by_projection(r.reshape(4, 3).numpy()) for r in x], dtype=torch.float64)
    assert torch.allclose(
        torch.atan2(torch.sin(got - ref), torch.cos(got - ref)),
        torch.zeros(64, dtype=torch.float64),
        atol=1e-10,
    )
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.linalg.det(q))  # a proper rotation
    moved = (x.reshape(64, 4, 3) @ q.T + torch.randn(3, generator=g, dtype=torch.float64)).reshape(64, 12)
    assert torch.allclose(dihedral(moved, (0, 1, 2, 3)), got, atol=1e-10)


def test_remove_com_and_shape_errors():
    x = torch.randn(5, 66)
    c = remove_com(x).reshape(5, 22, 3)
    assert torch.allclose(c.mean(1), torch.zeros(5, 3), atol=1e-6)
    with pytest.raises(ValueError, match=r"reshape"):
        phi_psi(torch.randn(5, 22, 3))


def test_com_free_basis_is_an_isometry_of_centred_coordinates():
    h = com_free_basis(22)
    x = remove_com(torch.randn(7, 66, dtype=torch.float64)).reshape(7, 22, 3)
    y = h.T @ x  # (7, 21, 3)
    assert torch.allclose(h @ y, x, atol=1e-12)
    assert torch.allclose(y.flatten(1).norm(dim=1), x.flatten(1).norm(dim=1), atol=1e-12)


def _read_pdb() -> np.ndarray:
    rows = [ln for ln in (DATA / "alanine-dipeptide.pdb").read_text().splitlines() if ln.startswith("ATOM")]
    return np.array([[float(ln[30:38]), float(ln[38:46]), float(ln[46:54])] for ln in rows]) / 10.0  # Å -> nm


@needs_data
def test_phi_psi_of_pdb_structure_by_hand():
    pos = _read_pdb()
    names = [
        ln[12:16].strip() + ":" + ln[17:20]
        for ln in (DATA / "alanine-dipeptide.pdb").read_text().splitlines()
        if ln.startswith("ATOM")
    ]
    assert [names[i] for i in PHI_ATOMS] == ["C:ACE", "N:ALA", "CA:ALA", "C:ALA"]
    assert [names[i] for i in PSI_ATOMS] == ["N:ALA", "CA:ALA", "C:ALA", "N:NME"]
    x = torch.from_numpy(pos.reshape(1, -1))
    ang = phi_psi(x)[0]
    hand = [_dihedral_by_projection(pos[list(idx)]) for idx in (PHI_ATOMS, PSI_ATOMS)]
    for a, h in zip(ang.tolist(), hand):
        assert math.isclose(math.cos(a), math.cos(h), abs_tol=1e-9) and math.isclose(
            math.sin(a), math.sin(h), abs_tol=1e-9
        )
    # the distributed structure is fully extended: φ = ψ = 180°
    assert torch.allclose(ang.abs(), torch.full((2,), math.pi, dtype=torch.float64), atol=1e-3)


# ----------------------------------------------------------------------------- OpenMM


def test_missing_files_error_names_them(tmp_path):
    from flowforge.data.aldp import AlanineDipeptide

    with pytest.raises((FileNotFoundError, ImportError), match=r"alanine-dipeptide\.prmtop|openmm"):
        AlanineDipeptide(tmp_path)


@pytest.fixture(scope="module")
def aldp():
    from flowforge.data.aldp import AlanineDipeptide

    return AlanineDipeptide(DATA)


@pytest.fixture(scope="module")
def md_frames(aldp, tmp_path_factory):
    return aldp.md_samples(64, seed=3, cache_dir=tmp_path_factory.mktemp("md"), stride=50, burn_in=2000)


def _openmm_reference(pos_nm: np.ndarray) -> tuple[float, np.ndarray, float]:
    """Energy (kJ/mol), forces (kJ/mol/nm) and kT from a fresh OpenMM context built here, by hand."""
    import openmm
    from openmm import app, unit

    prm = app.AmberPrmtopFile(str(DATA / "alanine-dipeptide.prmtop"))
    system = prm.createSystem(nonbondedMethod=app.NoCutoff, constraints=None)
    ctx = openmm.Context(
        system, openmm.VerletIntegrator(1e-3), openmm.Platform.getPlatformByName("Reference")
    )
    ctx.setPositions(pos_nm.reshape(-1, 3) * unit.nanometer)
    st = ctx.getState(getEnergy=True, getForces=True)
    kt = (unit.MOLAR_GAS_CONSTANT_R * 300 * unit.kelvin).value_in_unit(unit.kilojoule_per_mole)
    e = st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    f = st.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    return e, np.asarray(f).reshape(-1), kt


@needs_openmm
@needs_data
def test_energy_of_crd_matches_openmm_in_kT(aldp):
    from openmm import app, unit

    crd = app.AmberInpcrdFile(str(DATA / "alanine-dipeptide.crd"))
    pos = np.asarray(crd.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    e_ref, _, kt = _openmm_reference(pos)
    assert math.isclose(aldp.kT, kt, rel_tol=1e-12)
    x = torch.from_numpy(pos.reshape(1, 66))
    assert torch.allclose(aldp.initial_positions(), x)
    e = aldp.energy(x)
    assert e.shape == (1,) and e.dtype == torch.float64
    assert math.isclose(e.item(), e_ref / kt, rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(aldp.log_prob(x).item(), -e_ref / kt, rel_tol=1e-9)
    assert aldp(x).item() == e.item() and aldp.dim == 66 and aldp.log_z is None
    # translation invariance
    assert math.isclose(aldp.energy(remove_com(x)).item(), e.item(), rel_tol=1e-9)


@needs_openmm
@needs_data
def test_gradient_is_minus_force_over_kT_and_matches_finite_differences(aldp, md_frames):
    x = md_frames[:4].to(torch.float64).requires_grad_(True)
    e = aldp.energy(x)
    e.sum().backward()
    for i in range(4):
        _, f_ref, kt = _openmm_reference(x[i].detach().numpy())
        assert np.allclose(x.grad[i].numpy(), -f_ref / kt, rtol=1e-9, atol=1e-9)
    # central differences on a few coordinates of one frame (energies in float64)
    x0 = x[0].detach().clone()
    h = 1e-6
    for j in (0, 17, 40, 65):
        xp, xm = x0.clone(), x0.clone()
        xp[j] += h
        xm[j] -= h
        fd = (aldp.energy(xp[None]) - aldp.energy(xm[None])).item() / (2 * h)
        assert math.isclose(fd, x.grad[0, j].item(), rel_tol=1e-4, abs_tol=1e-3), (j, fd, x.grad[0, j].item())


@needs_openmm
@needs_data
def test_batch_dtype_and_chained_gradient(aldp, md_frames):
    x = md_frames[:6]
    e32 = aldp.energy(x)
    assert e32.shape == (6,) and e32.dtype == torch.float32
    rows = torch.cat([aldp.energy(x[i : i + 1]) for i in range(6)])
    assert torch.equal(e32, rows)
    # gradient through a function of the input reaches the leaf: d/dθ E(θ·x) = x · ∇E
    theta = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    xd = x.to(torch.float64)
    aldp.energy(theta * xd).sum().backward()
    xg = xd.clone().requires_grad_(True)
    aldp.energy(xg).sum().backward()
    assert math.isclose(theta.grad.item(), (xg.grad * xd).sum().item(), rel_tol=1e-9)
    with pytest.raises(ValueError, match=r"\(B, 66\)"):
        aldp.energy(x.reshape(6, 22, 3))
    with pytest.raises(NotImplementedError, match="reference_samples"):
        aldp.sample(3)


@needs_openmm
@needs_data
def test_non_finite_and_exploding_coordinates_give_finite_energies(aldp, md_frames):
    x = md_frames[:5].to(torch.float64).clone()
    x[0, 3] = float("nan")
    x[1, 10] = float("inf")
    x[2] = x[2] * 1e6  # exploded: E ~ 1e16 kT, above energy_cut
    x[3, 3:6] = x[3, 0:3]  # two atoms on top of each other: OpenMM gives NaN
    x.requires_grad_(True)
    e = aldp.energy(x)
    e.sum().backward()
    assert torch.isfinite(e).all() and torch.isfinite(x.grad).all()
    assert e[0] == aldp.energy_max and e[1] == aldp.energy_max and e[3] == aldp.energy_max
    assert aldp.energy_cut < e[2] < aldp.energy_cut + 100  # logarithmic growth above the cut
    assert (x.grad[0] == 0).all() and (x.grad[3] == 0).all()
    assert e[4] < 0 and x.grad[4].abs().max() > 0


@needs_openmm
@needs_data
def test_md_sampler_cache_hit_miss(aldp, tmp_path, monkeypatch):
    kw = {"stride": 20, "burn_in": 500}
    x = aldp.md_samples(40, seed=1, cache_dir=tmp_path, **kw)
    assert x.shape == (40, 66) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert torch.allclose(x.reshape(40, 22, 3).mean(1), torch.zeros(40, 3), atol=1e-5)  # CoM removed
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".npy")
    meta = json.loads((tmp_path / files[0]).read_text())
    assert meta["n"] == 40 and meta["temperature_K"] == 300.0 and meta["timestep_fs"] == 1.0

    def boom(*a, **k):
        raise AssertionError("MD ran although the cache should have answered")

    # hit: same settings, and fewer frames served from the longer cached run
    monkeypatch.setattr(type(aldp), "_run_md", boom)
    assert torch.equal(aldp.md_samples(40, seed=1, cache_dir=tmp_path, **kw), x)
    assert torch.equal(aldp.reference_samples(25, seed=1, cache_dir=tmp_path, **kw), x[:25])
    # miss: another seed, or more frames than cached
    with pytest.raises(AssertionError, match="cache should"):
        aldp.md_samples(40, seed=2, cache_dir=tmp_path, **kw)
    with pytest.raises(AssertionError, match="cache should"):
        aldp.md_samples(41, seed=1, cache_dir=tmp_path, **kw)
    monkeypatch.undo()
    # deterministic: regenerating without the cache gives the same trajectory
    again = aldp.md_samples(40, seed=1, cache_dir=tmp_path, read_cache=False, write_cache=False, **kw)
    assert torch.equal(again, x)
    # the environment variable moves the default cache
    monkeypatch.setenv("FLOWFORGE_CACHE", str(tmp_path / "env"))
    aldp.md_samples(5, seed=1, **kw)
    assert len(list((tmp_path / "env" / "reference").glob("aldp-md-*.npy"))) == 1


@needs_openmm
@needs_data
def test_md_samples_are_physical(aldp, md_frames):
    e = aldp.energy(md_frames)
    # minimum is about -47.5 kT; equipartition puts <E> roughly 63/2 kT above it
    assert -35 < e.mean().item() < 0
    ang = torch.rad2deg(aldp.phi_psi(md_frames))
    assert (ang[:, 0] < 0).float().mean() > 0.9  # starts and stays in the φ < 0 basins


# ----------------------------------------------------------------------------- internal coordinates


def _random_rotation(g: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.linalg.det(q))


def _kabsch_rmsd(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """RMSD of ``a (n, 3)`` onto ``b`` after the best rigid motion, and the determinant of the best rotation."""
    a, b = a - a.mean(0), b - b.mean(0)
    u, _, vt = torch.linalg.svd(a.T @ b)
    det = float(torch.linalg.det(vt.T @ u.T))
    rot = vt.T @ torch.diag(torch.tensor([1.0, 1.0, det], dtype=a.dtype)) @ u.T
    return float((a @ rot.T - b).norm(dim=1).square().mean().sqrt()), det


def _molecule_like(n: int, g: torch.Generator) -> torch.Tensor:
    """Random float64 configurations (n, 66): a 22-atom random walk with 0.1-0.15 nm steps (generic geometry)."""
    steps = torch.randn(n, 22, 3, generator=g, dtype=torch.float64)
    steps = 0.1 * steps / steps.norm(dim=-1, keepdim=True) * (1 + 0.5 * torch.rand(n, 22, 1, generator=g))
    return torch.cumsum(steps, 1).reshape(n, 66)


def _check_round_trip(ic: InternalCoordinates, x: torch.Tensor) -> torch.Tensor:
    y, ladj = ic(x)
    x2, ladj2 = ic.inverse(y)
    assert y.shape == (len(x), 60) and ladj.shape == (len(x),) and torch.isfinite(y).all()
    assert torch.allclose(ladj2, -ladj, atol=1e-9)
    assert torch.allclose(x2.reshape(-1, 22, 3).mean(1), torch.zeros(len(x), 3, dtype=x.dtype), atol=1e-12)
    for a, b in zip(x2.reshape(-1, 22, 3), x.reshape(-1, 22, 3)):
        rmsd, det = _kabsch_rmsd(a, b)
        assert rmsd < 1e-10 and det > 0  # the same molecule up to a proper rigid motion
    y2, ladj3 = ic(x2)
    assert torch.allclose(y2, y, atol=1e-9) and torch.allclose(ladj3, ladj, atol=1e-9)
    return y


def test_internal_coordinates_round_trip_and_rigid_invariance():
    g = torch.Generator().manual_seed(0)
    ic = InternalCoordinates(shift=ALDP_TORSION_SHIFT)
    x = _molecule_like(16, g)
    y = _check_round_trip(ic, x)
    assert ic.in_chart(y).all()
    moved = x.reshape(16, 22, 3) @ _random_rotation(g).T + torch.randn(3, generator=g, dtype=torch.float64)
    assert torch.allclose(ic(moved.reshape(16, 66))[0], y, atol=1e-9)
    # torsions read off the chart are the dihedrals of the Z-matrix rows
    tors = ic.torsion(y)
    for q, row in enumerate(ALDP_ZMATRIX):
        d = tors[:, q] - dihedral(x, row)
        assert torch.allclose(torch.atan2(d.sin(), d.cos()), torch.zeros(16, dtype=torch.float64), atol=1e-9)
    # outside the chart: a negative bond, an angle > π
    bad = y[:3].clone()
    bad[0, ic.bond_cols.start] = -0.1
    bad[1, ic.angle_cols.start] = 3.2
    assert ic.in_chart(bad).tolist() == [False, False, True]


def _rotation_zyz(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    def rz(t):
        z, o = torch.zeros_like(t), torch.ones_like(t)
        return torch.stack(
            [torch.stack([t.cos(), -t.sin(), z]), torch.stack([t.sin(), t.cos(), z]), torch.stack([z, z, o])]
        )

    z, o = torch.zeros_like(b), torch.ones_like(b)
    ry = torch.stack(
        [torch.stack([b.cos(), z, b.sin()]), torch.stack([z, o, z]), torch.stack([-b.sin(), z, b.cos()])]
    )
    return rz(a) @ ry @ rz(c)


def test_internal_coordinates_log_det_matches_autograd_jacobian():
    # (translation t, Euler angles (α, β, γ), y) -> x = R(α, β, γ) x(y) + t is a bijection of 66-dim
    # neighbourhoods; its |det| is sin β (Haar density of ZYZ angles, total 8π² like dΩ dψ) times exp(ladj).
    g = torch.Generator().manual_seed(1)
    ic = InternalCoordinates(shift=ALDP_TORSION_SHIFT)
    y, ladj_fwd = ic(_molecule_like(2, g))
    for yi, li in zip(y, ladj_fwd):
        ang = torch.tensor([0.4, 1.1, -2.0], dtype=torch.float64)
        p = torch.cat([torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64), ang, yi])

        def f(p):
            x, _ = ic.inverse(p[6:][None])
            rot = _rotation_zyz(p[3], p[4], p[5])
            return (x.reshape(22, 3) @ rot.T + p[:3]).reshape(66)

        jac = torch.func.jacrev(f)(p)
        sign, logabsdet = torch.linalg.slogdet(jac)
        ladj_inv = ic.inverse(yi[None])[1][0]
        assert sign != 0
        assert math.isclose(logabsdet.item() - math.log(math.sin(1.1)), ladj_inv.item(), abs_tol=1e-8)
        assert math.isclose(ladj_inv.item(), -li.item(), abs_tol=1e-9)


def test_internal_coordinates_validation_errors():
    with pytest.raises(ValueError, match="not placed yet"):
        InternalCoordinates([(3, 4, 0, 1), (4, 2, 0, 1)], frame=(0, 1, 2), n_atoms=5)
    with pytest.raises(ValueError, match="missing"):
        InternalCoordinates([(3, 2, 0, 1)], frame=(0, 1, 2), n_atoms=5)
    with pytest.raises(ValueError, match="one torsion offset per"):
        InternalCoordinates(shift=[0.0, 1.0])
    with pytest.raises(ValueError, match=r"\(B, 60\)"):
        InternalCoordinates().inverse(torch.zeros(2, 66))


@pytest.fixture(scope="module")
def aldp_int():
    from flowforge.data.aldp import AlanineDipeptideInternal

    return AlanineDipeptideInternal(DATA)


@needs_openmm
@needs_data
def test_internal_round_trip_and_phi_psi_on_md_frames(aldp_int, md_frames):
    x = md_frames.to(torch.float64)
    y = _check_round_trip(aldp_int.coords, x)
    assert torch.allclose(aldp_int.from_cartesian(x), y)
    assert torch.allclose(aldp_int.from_cartesian(aldp_int.to_cartesian(y)), y, atol=1e-9)
    d = aldp_int.phi_psi(y) - phi_psi(x)
    assert torch.allclose(torch.atan2(d.sin(), d.cos()), torch.zeros_like(d), atol=1e-9)
    assert aldp_int.dim == 60 and aldp_int.log_z is None


@needs_openmm
@needs_data
def test_internal_energy_is_cartesian_energy_minus_log_jacobian(aldp_int, md_frames):
    x = md_frames[:8].to(torch.float64)
    y, ladj_fwd = aldp_int.coords(x)
    e_int = aldp_int.energy(y)
    e_cart = aldp_int.cartesian.energy(x)
    assert torch.allclose(e_int, e_cart + ladj_fwd, rtol=0, atol=1e-8)  # -log|dx/dy| = log|dy/dx|
    assert aldp_int.energy(y.float()).dtype == torch.float32
    # outside the chart, or non-finite: energy_max with zero gradient; elsewhere gradients by the chain rule
    bad = y[:3].clone()
    bad[0, aldp_int.coords.bond_cols.start] = -0.1
    bad[1, 5] = float("nan")
    bad.requires_grad_(True)
    e = aldp_int.energy(bad)
    e.sum().backward()
    assert e[0] == e[1] == aldp_int.energy_max and e[2] < 1e3
    assert (bad.grad[:2] == 0).all() and torch.isfinite(bad.grad).all() and bad.grad[2].abs().max() > 0
    h = 1e-6
    for j in (0, 10, 30, 55):
        yp, ym = bad[2:3].detach().clone(), bad[2:3].detach().clone()
        yp[0, j] += h
        ym[0, j] -= h
        fd = (aldp_int.energy(yp) - aldp_int.energy(ym)).item() / (2 * h)
        assert math.isclose(fd, bad.grad[2, j].item(), rel_tol=1e-4, abs_tol=1e-3), (j, fd)


@needs_openmm
@needs_data
def test_internal_reference_samples_are_md_frames_in_internal_coordinates(aldp_int, tmp_path):
    kw = {"stride": 20, "burn_in": 500}
    y = aldp_int.reference_samples(30, seed=2, cache_dir=tmp_path, **kw)
    x = aldp_int.cartesian.md_samples(30, seed=2, cache_dir=tmp_path, **kw)
    assert y.shape == (30, 60) and y.dtype == torch.float32
    assert torch.allclose(y, aldp_int.coords(x.double())[0].float())


@needs_openmm
@needs_data
def test_aldp_bg_recipe_cli_smoke(tmp_path, monkeypatch, capsys):
    from flowforge.cli import main

    monkeypatch.setenv("FLOWFORGE_ALDP_DIR", str(DATA))
    monkeypatch.setenv("FLOWFORGE_CACHE", str(tmp_path / "cache"))  # two short MD runs (~1 s each)
    out = tmp_path / "run"
    sets = "n_train=300 n_test=200 eval_samples=500 transforms=2 hidden=32"
    assert main(["train", "aldp-bg", "--steps", "20", "--out", str(out), "--quiet", "--set", sets]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["dim"] == 60 and config["flow"] == "realnvp"
    capsys.readouterr()
    assert main(["eval", str(out)]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"ess", "logz", "nll"} <= set(res)
    assert 0 < res["ess"] <= 1 and math.isfinite(res["logz"]) and math.isfinite(res["nll"])
