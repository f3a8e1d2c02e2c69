"""Alanine dipeptide in vacuum: an OpenMM energy in kT with forces as gradients, MD reference samples, φ/ψ.

Alanine dipeptide (Ace-Ala-Nme, 22 atoms) is the standard small-molecule Boltzmann-generator target
(Noé et al., "Boltzmann generators", Science 2019; Midgley et al., FAB, ICLR 2023). A configuration is
the flattened Cartesian coordinates of the 22 atoms in **nanometres**, ``x: (B, 66)`` laid out as
``[x_0, y_0, z_0, x_1, ...]`` in the atom order of the Amber ``.prmtop`` file.

The energy is the Amber force field of the ``.prmtop`` file evaluated by OpenMM (Eastman et al.,
"OpenMM 8: molecular dynamics simulation with machine learning potentials", J. Phys. Chem. B 2024)
**in vacuum, without cut-off (``NoCutoff``) and without constraints**, so it is defined for any
coordinates, divided by ``kT = R·T``. Gradients are OpenMM's forces, ``dE/dx = -F/kT``, returned through
a custom :class:`torch.autograd.Function`, so ``energy(x).sum().backward()`` works; second derivatives
are not available.

Non-finite or exploding coordinates get a large *finite* energy so that importance weights and losses
stay finite (the regularisation of FAB's ``aldp.py``):

* rows with a non-finite coordinate, or where OpenMM's energy is not finite (e.g. two atoms on top of
  each other), get ``energy_max`` and a zero gradient;
* above ``energy_cut`` the energy grows logarithmically, ``E' = cut + log(1 + E - cut)`` (gradient scaled
  by ``1 / (1 + E - cut)``), and is clamped at ``energy_max``.

With the defaults (``1e8`` kT and ``1e20`` kT) nothing with a non-negligible Boltzmann weight is changed.

Flows do much better on **internal coordinates** than on Cartesian ones (``benchmarks/RESULTS-aldp.md``):
:class:`InternalCoordinates` maps ``x: (B, 66)`` to 60 numbers (a rigid frame on CA, N, C plus bond length,
angle and charted torsion of the other 19 atoms, :data:`ALDP_ZMATRIX`) with its log-Jacobian, and
:class:`AlanineDipeptideInternal` is the Boltzmann target pushed to them, ``E(x(y)) - log|det ∂x/∂y|``.

OpenMM is an optional dependency (``pip install 'flowforge[aldp]'``); it is imported inside the functions
that need it, so this module imports without it, and :func:`phi_psi` / :func:`dihedral` /
:func:`remove_com` / :class:`InternalCoordinates` are pure torch.

Example:
    >>> x = torch.tensor([[1.0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 1]])  # 4 atoms: a +90 degree torsion
    >>> round(math.degrees(dihedral(x, (0, 1, 2, 3)).item()), 3)
    90.0
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from flowforge.data.energies import Energy, default_cache_dir, remove_mean

__all__ = [
    "AlanineDipeptide",
    "aldp_dihedrals",
    "AlanineDipeptideInternal",
    "ALDP_FILES",
    "ALDP_FRAME",
    "ALDP_N_ATOMS",
    "ALDP_TORSION_SHIFT",
    "ALDP_ZMATRIX",
    "InternalCoordinates",
    "com_free_basis",
    "PHI_ATOMS",
    "PSI_ATOMS",
    "dihedral",
    "phi_psi",
    "remove_com",
]

ALDP_N_ATOMS = 22
ALDP_FILES: dict[str, str] = {"prmtop": "alanine-dipeptide.prmtop", "crd": "alanine-dipeptide.crd"}
"""File names looked up in the data directory (the Amber files distributed with openmmtools)."""

#: 0-based atom indices of φ = C(ACE)-N(ALA)-CA(ALA)-C(ALA) and ψ = N(ALA)-CA(ALA)-C(ALA)-N(NME) in the
#: atom order of the openmmtools ``alanine-dipeptide.prmtop`` (checked against the topology at load time).
PHI_ATOMS: tuple[int, int, int, int] = (4, 6, 8, 14)
PSI_ATOMS: tuple[int, int, int, int] = (6, 8, 14, 16)

_INSTALL_HINT = "install it with: pip install 'flowforge[aldp]'  (or: pip install openmm)"
_R_KJ_PER_MOL_K = 8.31446261815324e-3  # molar gas constant (OpenMM's value), kJ/(mol K)


def _import_openmm() -> Any:
    try:
        import openmm
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"AlanineDipeptide needs OpenMM, which is not installed; {_INSTALL_HINT}") from exc
    return openmm


# --------------------------------------------------------------------------------------------------
# Geometry (pure torch)
# --------------------------------------------------------------------------------------------------


def _as_atoms(x: Tensor, name: str = "x") -> Tensor:
    if x.dim() != 2 or x.shape[1] % 3 != 0:
        raise ValueError(
            f"{name} must be flattened Cartesian coordinates of shape (B, 3 * n_atoms), got {tuple(x.shape)}; "
            "write x.reshape(len(x), -1) for (B, n_atoms, 3) input, or x[None] for a single configuration"
        )
    return x.reshape(x.shape[0], -1, 3)


def dihedral(x: Tensor, atoms: Sequence[int]) -> Tensor:
    """Dihedral angle of four atoms, in radians in ``(-π, π]``, IUPAC sign convention.

    ``x: (B, 3 * n_atoms)`` flattened coordinates; ``atoms = (i, j, k, l)``; returns ``(B,)``. With bond
    vectors ``b1 = r_j - r_i``, ``b2 = r_k - r_j``, ``b3 = r_l - r_k``:
    ``angle = atan2(|b2| b1 · (b2 × b3), (b1 × b2) · (b2 × b3))``. Differentiable (away from collinear atoms).
    """
    if len(atoms) != 4:
        raise ValueError(f"a dihedral needs 4 atom indices, got {tuple(atoms)}")
    r = _as_atoms(x)
    return _dihedral_points(*(r[:, int(a)] for a in atoms))


def _dihedral_points(p0: Tensor, p1: Tensor, p2: Tensor, p3: Tensor) -> Tensor:
    """Dihedral of points ``(..., 3)`` (see :func:`dihedral`), ``(...)`` radians in ``(-π, π]``."""
    b1, b2, b3 = p1 - p0, p2 - p1, p3 - p2
    n2 = torch.linalg.cross(b2, b3, dim=-1)
    y = b2.norm(dim=-1) * (b1 * n2).sum(-1)
    xx = (torch.linalg.cross(b1, b2, dim=-1) * n2).sum(-1)
    return torch.atan2(y, xx)


def phi_psi(x: Tensor, phi_atoms: Sequence[int] = PHI_ATOMS, psi_atoms: Sequence[int] = PSI_ATOMS) -> Tensor:
    """Backbone dihedrals ``(φ, ψ)`` of alanine dipeptide, ``x: (B, 66)`` in nm -> ``(B, 2)`` in radians.

    φ = C(ACE)-N-CA-C and ψ = N-CA-C-N(NME) (atoms ``PHI_ATOMS`` / ``PSI_ATOMS``); the C7eq basin sits near
    (-83°, 75°), αR near (-70°, -40°), C7ax near (70°, -70°).
    """
    return torch.stack([dihedral(x, phi_atoms), dihedral(x, psi_atoms)], dim=-1)


def aldp_dihedrals(
    n: int,
    *,
    seed: int = 0,
    path: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    dtype: torch.dtype = torch.float32,
    **md: Any,
) -> Tensor:
    """Backbone dihedrals ``(φ, ψ)`` of ``n`` MD frames as points of the flat torus, ``(n, 2)`` in ``[0, 2π)``.

    The frames are :meth:`AlanineDipeptide.md_samples` ``(n, seed=seed, cache_dir=cache_dir, **md)``
    (one cached 300 K Langevin trajectory per seed; about a minute for 50 k frames), their angles
    :func:`phi_psi` wrapped from ``(-π, π]`` to ``[0, 2π)``. ``path`` is the directory of the Amber files
    (default ``$FLOWFORGE_ALDP_DIR``). Needs OpenMM.
    """
    target = AlanineDipeptide(path)
    x = target.md_samples(n, seed=seed, cache_dir=cache_dir, **md)
    ang = torch.remainder(target.phi_psi(x.to(torch.float64)), 2 * math.pi)
    ang = torch.where(ang >= 2 * math.pi, torch.zeros_like(ang), ang)
    return ang.to(dtype)


def remove_com(x: Tensor) -> Tensor:
    """Subtract the centre of geometry (unweighted mean over atoms; the "CoM" of flow papers), ``(B, 3n) -> (B, 3n)``.

    Example:
        >>> remove_com(torch.tensor([[1.0, 2.0, 3.0, 3.0, 2.0, 1.0]]))
        tensor([[-1.,  0.,  1.,  1.,  0., -1.]])
    """
    return remove_mean(x, _as_atoms(x).shape[1], 3)


def com_free_basis(n_atoms: int, dtype: torch.dtype = torch.float64) -> Tensor:
    r"""Orthonormal basis ``H: (n, n-1)`` of the vectors orthogonal to ``(1, ..., 1)`` (Helmert contrasts).

    ``h_k = (1, ..., 1, -k, 0, ..., 0) / sqrt(k (k + 1))`` (``k`` ones), ``k = 1..n-1``. With atoms as rows,
    ``Y = Hᵀ X`` maps centred coordinates ``X: (n, 3)`` to ``3(n-1)`` free coordinates and ``X = H Y``
    maps back; the map is an isometry of the centre-free subspace, so a density of ``Y`` *is* the density
    on that subspace (no Jacobian term). This is how a flow models the 3(n-1) non-degenerate
    coordinates of a translation-invariant target.

    Example:
        >>> h = com_free_basis(4)
        >>> torch.allclose(h.T @ h, torch.eye(3, dtype=h.dtype)), torch.allclose(h.sum(0), torch.zeros(3, dtype=h.dtype))
        (True, True)
    """
    if n_atoms < 2:
        raise ValueError(f"com_free_basis needs n_atoms >= 2, got {n_atoms}")
    h = torch.zeros(n_atoms, n_atoms - 1, dtype=dtype)
    for k in range(1, n_atoms):
        h[:k, k - 1] = 1.0
        h[k, k - 1] = -float(k)
        h[:, k - 1] /= math.sqrt(k * (k + 1))
    return h


# --------------------------------------------------------------------------------------------------
# Energy with OpenMM forces as the backward pass
# --------------------------------------------------------------------------------------------------


class _OpenMMEnergy(torch.autograd.Function):
    """``E(x)`` from a numpy evaluator, with the evaluator's gradient as the backward pass (first order only)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, target: AlanineDipeptide) -> Tensor:  # type: ignore[override]
        e, g = target._evaluate(x.detach(), with_grad=True)
        ctx.save_for_backward(torch.from_numpy(g).to(device=x.device, dtype=x.dtype))
        return torch.from_numpy(e).to(device=x.device, dtype=x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_e: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (g,) = ctx.saved_tensors
        return grad_e[:, None] * g, None


class AlanineDipeptide(Energy):
    """Boltzmann target ``p(x) ∝ exp(-E(x))`` of alanine dipeptide in vacuum, energies in kT (OpenMM, Amber).

    An :class:`~flowforge.data.energies.Energy`: ``energy(x: (B, 66)) -> (B,)`` in kT (also ``__call__``),
    ``log_prob = -energy`` (unnormalised; ``log_z`` is ``None``), ``dim = 66``, no exact ``sample`` (it
    raises), and ``reference_samples(n, seed, cache_dir)`` = :meth:`md_samples`. The energy is translation and rotation
    invariant, so ``exp(-E)`` is not normalisable over R^66: flows model the centre-of-geometry-free
    coordinates (see :func:`remove_com`).

    Args:
        path: directory holding ``alanine-dipeptide.prmtop`` and ``alanine-dipeptide.crd`` (or the path of
            the ``.prmtop`` file itself, the ``.crd`` next to it). ``None`` reads ``$FLOWFORGE_ALDP_DIR``.
        temperature: kelvin; ``kT = R·T`` (2.494 kJ/mol at 300 K).
        platform: OpenMM platform for energies and MD: ``"Reference"`` (default; fastest for 22 atoms,
            ~20–40 k energy evaluations/s on one core) or ``"CPU"`` (any platform OpenMM has works).
        threads: thread count for the ``"CPU"`` platform (``None``: OpenMM's default).
        energy_cut, energy_max: regularisation of huge energies, in kT (see the module docstring).

    Not thread-safe: one OpenMM context evaluates the batch row by row.

    Example (needs OpenMM and the data files)::

        aldp = AlanineDipeptide("/path/to/alanine_dipeptide")
        x = aldp.md_samples(20_000, seed=0)            # (20000, 66) nm, CoM removed, cached
        e = aldp.energy(x[:8].requires_grad_())        # (8,) kT
        e.sum().backward()                             # gradients = -forces / kT
        angles = phi_psi(x)                            # (20000, 2) radians
    """

    n_atoms: int = ALDP_N_ATOMS

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        temperature: float = 300.0,
        platform: str = "Reference",
        threads: int | None = None,
        energy_cut: float = 1e8,
        energy_max: float = 1e20,
    ) -> None:
        if not temperature > 0:
            raise ValueError(f"temperature must be positive kelvin, got {temperature}")
        if not 0 < energy_cut < energy_max:
            raise ValueError(f"need 0 < energy_cut < energy_max, got {energy_cut} and {energy_max}")
        prmtop_path, crd_path = _find_files(path)
        super().__init__(dim=3 * ALDP_N_ATOMS, log_z=None)
        self.prmtop_path, self.crd_path = prmtop_path, crd_path
        self.temperature = float(temperature)
        self.kT = _R_KJ_PER_MOL_K * self.temperature  # kJ/mol
        self.platform = platform
        self.threads = threads
        self.energy_cut = float(energy_cut)
        self.energy_max = float(energy_max)

        openmm = _import_openmm()
        from openmm import app, unit

        self._prmtop = app.AmberPrmtopFile(str(self.prmtop_path))
        crd = app.AmberInpcrdFile(str(self.crd_path))
        self.atom_names = [f"{a.residue.name}:{a.name}" for a in self._prmtop.topology.atoms()]
        if len(self.atom_names) != ALDP_N_ATOMS:
            raise ValueError(
                f"{self.prmtop_path} has {len(self.atom_names)} atoms, alanine dipeptide has {ALDP_N_ATOMS}; "
                "pass the directory of the 22-atom Ace-Ala-Nme vacuum files"
            )
        self.phi_atoms, self.psi_atoms = _backbone_dihedrals(self._prmtop.topology)
        pos = np.asarray(crd.getPositions(asNumpy=True).value_in_unit(unit.nanometer), dtype=np.float64)
        self._initial = pos.reshape(-1)
        # vacuum, no cut-off, no constraints: E is defined (and smooth) for any coordinates
        self._system = self._make_system(remove_cm_motion=False)
        self._platform = self._get_platform(openmm)
        self._context = openmm.Context(
            self._system, openmm.VerletIntegrator(0.001), self._platform, self._platform_properties()
        )

    # ---------------------------------------------------------------- OpenMM plumbing

    def _make_system(self, remove_cm_motion: bool) -> Any:
        from openmm import app

        return self._prmtop.createSystem(
            nonbondedMethod=app.NoCutoff, constraints=None, rigidWater=False, removeCMMotion=remove_cm_motion
        )

    def _get_platform(self, openmm: Any) -> Any:
        names = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
        if self.platform not in names:
            raise ValueError(
                f"OpenMM platform {self.platform!r} is not available here; choose one of {names}"
            )
        return openmm.Platform.getPlatformByName(self.platform)

    def _platform_properties(self) -> dict[str, str]:
        if self.threads is not None and self.platform == "CPU":
            return {"Threads": str(int(self.threads))}
        return {}

    def _evaluate(self, x: Tensor, with_grad: bool) -> tuple[np.ndarray, np.ndarray]:
        """Regularised energies ``(B,)`` in kT and their gradients ``(B, 66)`` in kT/nm (zeros without grad)."""
        from openmm import OpenMMException, unit

        r = np.ascontiguousarray(_as_atoms(x).detach().to("cpu", torch.float64).numpy())  # (B, 22, 3) nm
        n = r.shape[0]
        energy = np.full(n, self.energy_max, dtype=np.float64)
        grad = np.zeros((n, self.dim), dtype=np.float64)
        kj, kj_nm = unit.kilojoule_per_mole, unit.kilojoule_per_mole / unit.nanometer
        finite = np.isfinite(r).all(axis=(1, 2))
        ctx = self._context
        for i in np.flatnonzero(finite):
            try:
                ctx.setPositions(r[i])
                state = ctx.getState(getEnergy=True, getForces=with_grad)
            except OpenMMException:  # a platform that refuses the coordinates: treat as exploded
                continue
            e = state.getPotentialEnergy().value_in_unit(kj) / self.kT
            if not math.isfinite(e):
                continue
            if with_grad:
                f = np.asarray(state.getForces(asNumpy=True).value_in_unit(kj_nm)).reshape(-1)
                if not np.isfinite(f).all():
                    continue
                grad[i] = -f / self.kT
            if e > self.energy_cut:  # logarithmic growth above the cut (FAB's regularisation)
                scale = 1.0 / (1.0 + (e - self.energy_cut))
                e = self.energy_cut + math.log1p(e - self.energy_cut)
                grad[i] *= scale
                if e >= self.energy_max:
                    e, grad[i] = self.energy_max, 0.0
            energy[i] = e
        return energy, grad

    # ---------------------------------------------------------------- Energy interface

    def energy(self, x: Tensor) -> Tensor:
        """Potential energy in kT, ``x: (B, 66)`` nm -> ``(B,)`` (same dtype/device as ``x``).

        Differentiable once when ``x`` requires grad (gradients are ``-forces / kT``, from OpenMM).
        """
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(
                f"alanine dipeptide coordinates must have shape (B, {self.dim}) (22 atoms x 3, in nm), got "
                f"{tuple(x.shape)}; write x.reshape(len(x), {self.dim}) for (B, 22, 3) input"
            )
        if not x.is_floating_point():
            raise TypeError(f"coordinates must be floating point (nm), got {x.dtype}")
        if torch.is_grad_enabled() and x.requires_grad:
            return _OpenMMEnergy.apply(x, self)
        e, _ = self._evaluate(x, with_grad=False)
        return torch.from_numpy(e).to(device=x.device, dtype=x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.energy(x)

    def log_prob(self, x: Tensor) -> Tensor:
        """Unnormalised log-density ``-E(x)`` in nats, ``(B, 66) -> (B,)``."""
        return -self.energy(x)

    def forces(self, x: Tensor) -> Tensor:
        """OpenMM forces in kJ/(mol nm), ``(B, 66) -> (B, 66)``, unregularised rows only (others are 0)."""
        _, g = self._evaluate(x, with_grad=True)
        return torch.from_numpy(-g * self.kT).to(device=x.device, dtype=x.dtype)

    def initial_positions(self) -> Tensor:
        """The ``.crd`` structure, ``(1, 66)`` float64 nm (not centred)."""
        return torch.from_numpy(self._initial.copy())[None]

    def phi_psi(self, x: Tensor) -> Tensor:
        """``(φ, ψ)`` in radians, ``(B, 66) -> (B, 2)``, with the indices read from this topology."""
        return phi_psi(x, self.phi_atoms, self.psi_atoms)

    @property
    def params(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "platform": self.platform}

    def reference_samples(
        self, n: int, seed: int = 0, cache_dir: str | os.PathLike[str] | None = None, **md: Any
    ) -> Tensor:
        """Reference samples ``(n, 66)`` = :meth:`md_samples` (keyword options are passed on)."""
        return self.md_samples(n, seed=seed, cache_dir=cache_dir, **md)

    # ---------------------------------------------------------------- molecular dynamics

    def md_samples(
        self,
        n: int,
        seed: int = 0,
        cache_dir: str | os.PathLike[str] | None = None,
        *,
        stride: int = 100,
        burn_in: int = 20_000,
        timestep_fs: float = 1.0,
        friction_per_ps: float = 1.0,
        minimize: bool = True,
        read_cache: bool = True,
        write_cache: bool = True,
    ) -> Tensor:
        """Samples of ``exp(-E/kT)`` from one Langevin MD trajectory, ``(n, 66)`` float32 nm, CoM removed.

        OpenMM ``LangevinMiddleIntegrator`` at ``self.temperature`` with ``timestep_fs`` (1 fs: there are no
        constraints, so bonds to hydrogen vibrate; do not go above ~1.5 fs) and ``friction_per_ps``, on the
        same vacuum / NoCutoff / unconstrained system as :meth:`energy` (plus a centre-of-mass motion
        remover, which leaves the potential unchanged). The ``.crd`` structure is minimised, velocities are
        drawn at the temperature, ``burn_in`` steps are discarded, then one frame is kept every ``stride``
        steps (default 100 fs). Frames are correlated (transitions to the φ > 0 basins are rare at 300 K).
        Throughput on the Reference platform: ~80 k steps/s, i.e. 50 k frames at stride 100 in ~1 minute.

        Cached in ``cache_dir`` (default :func:`default_cache_dir`) as ``aldp-md-<key>.npy`` plus a JSON of
        the settings, written atomically; ``key`` hashes the settings except ``n``, so a cached longer
        trajectory serves shorter requests (its first ``n`` frames: the same trajectory).
        """
        if not (isinstance(n, int) and n > 0):
            raise ValueError(f"n must be a positive int, got {n!r}")
        if not (isinstance(seed, int) and 0 <= seed < 2**31 - 1):
            raise ValueError(f"seed must be an int in [0, 2**31 - 1), got {seed!r}")
        if stride < 1 or burn_in < 0 or not timestep_fs > 0 or not friction_per_ps > 0:
            raise ValueError("need stride >= 1, burn_in >= 0, timestep_fs > 0 and friction_per_ps > 0")
        openmm = _import_openmm()
        settings = {
            "system": "alanine-dipeptide vacuum NoCutoff no-constraints",
            "prmtop_sha256": _sha256(self.prmtop_path),
            "crd_sha256": _sha256(self.crd_path),
            "temperature_K": self.temperature,
            "integrator": "LangevinMiddleIntegrator",
            "timestep_fs": float(timestep_fs),
            "friction_per_ps": float(friction_per_ps),
            "stride_steps": int(stride),
            "burn_in_steps": int(burn_in),
            "minimize": bool(minimize),
            "seed": int(seed),
            "platform": self.platform,
            "com_removed": True,
            "units": "nm",
        }
        key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        npy, meta = root / f"aldp-md-{key}.npy", root / f"aldp-md-{key}.json"
        if read_cache and npy.is_file() and meta.is_file():
            try:
                arr = np.load(npy, mmap_mode="r")
                if arr.ndim == 2 and arr.shape[1] == self.dim and arr.shape[0] >= n:
                    return torch.from_numpy(np.array(arr[:n], dtype=np.float32))
            except (OSError, ValueError):
                pass  # damaged cache: regenerate below

        t0 = time.perf_counter()
        frames = self._run_md(openmm, n, seed, stride, burn_in, timestep_fs, friction_per_ps, minimize)
        seconds = time.perf_counter() - t0
        x = remove_com(torch.from_numpy(frames.reshape(n, self.dim))).to(torch.float32)
        if write_cache:
            record = settings | {
                "n": n,
                "seconds": round(seconds, 2),
                "openmm_version": openmm.__version__,
                "key": key,
            }
            _atomic_write(npy, lambda f: np.save(f, x.numpy()))
            _atomic_write(meta, lambda f: f.write(json.dumps(record, indent=2).encode()))
        return x

    def _run_md(
        self,
        openmm: Any,
        n: int,
        seed: int,
        stride: int,
        burn_in: int,
        timestep_fs: float,
        friction_per_ps: float,
        minimize: bool,
    ) -> np.ndarray:
        from openmm import unit

        system = self._make_system(remove_cm_motion=True)
        integrator = openmm.LangevinMiddleIntegrator(
            self.temperature * unit.kelvin,
            friction_per_ps / unit.picosecond,
            timestep_fs * unit.femtosecond,
        )
        integrator.setRandomNumberSeed(seed + 1)  # OpenMM reads seed 0 as "pick one at random"
        ctx = openmm.Context(system, integrator, self._platform, self._platform_properties())
        ctx.setPositions(self._initial.reshape(-1, 3))
        if minimize:
            openmm.LocalEnergyMinimizer.minimize(ctx, 1.0, 2000)
        ctx.setVelocitiesToTemperature(self.temperature * unit.kelvin, seed + 1)
        if burn_in:
            integrator.step(burn_in)
        out = np.empty((n, ALDP_N_ATOMS, 3), dtype=np.float64)
        for i in range(n):
            integrator.step(stride)
            out[i] = ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        if not np.isfinite(out).all():
            raise RuntimeError(
                f"MD blew up (non-finite positions) with timestep {timestep_fs} fs; without constraints use "
                "timestep_fs=1.0 or smaller"
            )
        return out


# --------------------------------------------------------------------------------------------------
# Internal coordinates (pure torch) and the energy over them
# --------------------------------------------------------------------------------------------------

#: Atoms ``(a, b, c)`` = (CA, N, C) of alanine that fix the rigid frame of :class:`InternalCoordinates`.
ALDP_FRAME: tuple[int, int, int] = (8, 6, 14)

#: Z-matrix of the 19 atoms outside :data:`ALDP_FRAME`, rows ``(i, j, k, l)``: atom ``i`` is placed at bond
#: length ``|r_i - r_j|``, angle ``∠(i, j, k)`` and torsion ``dihedral(i, j, k, l)`` from atoms placed
#: before it (a FAB-style mixed Z-matrix; every ``i-j`` and ``j-k`` is a bond of the Amber topology, checked
#: by :class:`AlanineDipeptideInternal`). φ is the torsion of row 3 (C of ACE), ψ that of row 9 (N of NME);
#: the methyl hydrogens after the first are placed relative to the first (their torsions are ≈ ±120°).
ALDP_ZMATRIX: tuple[tuple[int, int, int, int], ...] = (
    (9, 8, 6, 14),  # ALA HA
    (10, 8, 6, 14),  # ALA CB
    (7, 6, 8, 14),  # ALA H
    (4, 6, 8, 14),  # ACE C: torsion = φ
    (5, 4, 6, 8),  # ACE O
    (1, 4, 6, 8),  # ACE CH3: torsion = ω
    (0, 1, 4, 6),  # ACE H1 (methyl rotor)
    (2, 1, 4, 0),  # ACE H2
    (3, 1, 4, 0),  # ACE H3
    (16, 14, 8, 6),  # NME N: torsion = ψ
    (15, 14, 8, 16),  # ALA O
    (17, 16, 14, 8),  # NME H
    (18, 16, 14, 8),  # NME C: torsion = ω'
    (19, 18, 16, 14),  # NME H1 (methyl rotor)
    (20, 18, 16, 19),  # NME H2
    (21, 18, 16, 19),  # NME H3
    (11, 10, 8, 6),  # ALA HB1 (methyl rotor)
    (12, 10, 8, 11),  # ALA HB2
    (13, 10, 8, 11),  # ALA HB3
)

#: Torsion offsets (radians) of :data:`ALDP_ZMATRIX`: the circular means of its torsions over 5 ns of our
#: 300 K MD (``md_samples(50_000, seed=0)``), rounded. Any offset gives the same exact density; it only
#: moves the branch cut of the torsion chart (see :class:`InternalCoordinates`) away from where the mass is.
ALDP_TORSION_SHIFT: tuple[float, ...] = (
    2.069, -2.166, 1.063, -2.008, -0.030, 3.108, 1.551, 2.094, -2.095, 2.188,
    3.138, -0.040, 3.138, 1.211, 2.095, -2.094, 0.438, 2.095, -2.095,
)  # fmt: skip

_TORSION_EPS = 1e-6  # |τ - shift| / π is clipped to 1 - eps before atanh


def _log_pi_sech2(v: Tensor) -> Tensor:
    """``log(π sech² v) = log π + 2 (log 2 - |v| - log1p(exp(-2|v|)))``, elementwise and stable."""
    a = v.abs()
    return math.log(math.pi) + 2 * (math.log(2.0) - a - torch.log1p(torch.exp(-2 * a)))


def _check_zmatrix(zmatrix: tuple[tuple[int, ...], ...], frame: tuple[int, ...], n_atoms: int) -> None:
    if len(frame) != 3 or len(set(frame)) != 3 or not all(0 <= a < n_atoms for a in frame):
        raise ValueError(f"frame must be 3 distinct atom indices in [0, {n_atoms}), got {frame}")
    placed = set(frame)
    for q, row in enumerate(zmatrix):
        if len(row) != 4 or len(set(row)) != 4:
            raise ValueError(f"Z-matrix row {q} must be 4 distinct atom indices (i, j, k, l), got {row}")
        i, *partners = row
        if not 0 <= i < n_atoms or i in placed:
            raise ValueError(f"Z-matrix row {q} places atom {i}, which is out of range or placed already")
        late = [p for p in partners if p not in placed]
        if late:
            raise ValueError(
                f"Z-matrix row {q} {row} refers to atoms {late} that are not placed yet; order the rows so "
                "that every partner (j, k, l) is a frame atom or the atom of an earlier row"
            )
        placed.add(i)
    if len(placed) != n_atoms:
        missing = sorted(set(range(n_atoms)) - placed)
        raise ValueError(f"the frame and the Z-matrix must place every atom once; missing {missing}")


class InternalCoordinates(nn.Module):
    r"""Cartesian coordinates ``x: (B, 3N)`` ↔ ``3N - 6`` internal coordinates ``y`` (rigid motions removed).

    The chart of FAB (Midgley et al., ICLR 2023) and bgflow: a rigid frame from three atoms ``(a, b, c)``
    plus bond length / angle / torsion of every other atom from a Z-matrix. ``y`` is laid out as

    ``[log d, c1, log c2 | b_1..b_m | θ_1..θ_m | v_1..v_m]``, ``m = N - 3``:

    - frame: ``d = |r_b - r_a|``; ``c1``, ``c2 > 0`` the components of ``r_c - r_a`` along ``e1 = (r_b - r_a)/d``
      and orthogonal to it (log-parametrised, so unbounded);
    - row ``q = (i, j, k, l)`` of the Z-matrix: bond ``b = |r_i - r_j|`` (nm), angle ``θ = ∠ijk ∈ (0, π)``,
      torsion ``τ = dihedral(i, j, k, l)`` charted as ``v = atanh(wrap(τ - shift_q) / π)`` with
      ``wrap`` into ``[-π, π)``: every ``v ∈ R`` is a valid torsion, so flows with an unbounded base or
      linear tails need no care at the periodic boundary.

    **Measure.** Position (atom ``a``) and orientation are integrated out: with ``dΩ dψ`` the rotation
    volume (``8π²`` in total) the 3N-dim Lebesgue measure factorises as

    .. math:: dx = dt\, d\Omega\, d\psi \; d^3 c_2^2 \prod_q b_q^2 \sin\theta_q \prod_q \pi\,\mathrm{sech}^2 v_q \; dy,

    and ``ladj`` is the log of that factor: :meth:`inverse` returns
    ``log|det ∂x/∂y| = 3 log d + 2 log c2 + Σ (2 log b + log sin θ) + Σ log(π sech² v)`` and :meth:`forward`
    its negative. So ``p_y(y) = p_x(x(y)) · exp(ladj_inverse)`` is the density, w.r.t. Lebesgue measure on
    ``R^{3N-6}``, of the conformation (the configuration modulo rigid motions) of ``x ~ p_x`` for any
    translation- and rotation-invariant ``p_x``. The map is smooth away from collinear partner atoms;
    ``y`` with a bond ``<= 0`` or an angle outside ``(0, π)`` lies outside the chart (:meth:`in_chart`).

    Args:
        zmatrix: rows ``(i, j, k, l)``; partners ``j, k, l`` must be frame atoms or placed by earlier rows.
        frame: ``(a, b, c)``.
        n_atoms: ``N``; frame and Z-matrix must place every atom once.
        shift: ``(m,)`` torsion offsets in radians (default zeros).

    Example (a 4-atom molecule; the round trip recovers it up to a rigid motion):
        >>> ic = InternalCoordinates([(3, 2, 0, 1)], frame=(0, 1, 2), n_atoms=4)
        >>> x = torch.tensor([[0.0, 0, 0, 1, 0, 0, 0, 1, 0, 0.5, 1.5, 0.5]], dtype=torch.float64)
        >>> y, ladj = ic(x)
        >>> x2, ladj2 = ic.inverse(y)
        >>> y.shape, torch.allclose(ladj, -ladj2)
        (torch.Size([1, 6]), True)
        >>> d = lambda x: torch.cdist(x.reshape(-1, 3), x.reshape(-1, 3))
        >>> torch.allclose(d(x), d(x2))
        True
    """

    def __init__(
        self,
        zmatrix: Sequence[Sequence[int]] = ALDP_ZMATRIX,
        frame: Sequence[int] = ALDP_FRAME,
        n_atoms: int = ALDP_N_ATOMS,
        shift: Sequence[float] | Tensor | None = None,
    ) -> None:
        super().__init__()
        zm = tuple(tuple(int(v) for v in row) for row in zmatrix)
        fr = tuple(int(v) for v in frame)
        _check_zmatrix(zm, fr, int(n_atoms))
        self.zmatrix, self.frame, self.n_atoms = zm, fr, int(n_atoms)
        m = len(zm)
        self.dim = 3 + 3 * m
        sh = (
            torch.zeros(m, dtype=torch.float64)
            if shift is None
            else torch.as_tensor(shift, dtype=torch.float64)
        )
        if sh.shape != (m,):
            raise ValueError(
                f"shift must hold one torsion offset per Z-matrix row, shape ({m},), got {tuple(sh.shape)}"
            )
        self.register_buffer("shift", sh.clone())
        self.bond_cols = slice(3, 3 + m)
        self.angle_cols = slice(3 + m, 3 + 2 * m)
        self.torsion_cols = slice(3 + 2 * m, 3 + 3 * m)

    # -- raw internal coordinates s = (log d, c1, log c2, b, θ, τ) -------------------------------------

    def _raw(self, x: Tensor) -> Tensor:
        r = _as_atoms(x)
        if r.shape[1] != self.n_atoms:
            raise ValueError(f"x must have shape (B, {3 * self.n_atoms}), got {tuple(x.shape)}")
        a, b, c = self.frame
        u, w = r[:, b] - r[:, a], r[:, c] - r[:, a]
        d = u.norm(dim=-1)
        c1 = (w * u).sum(-1) / d
        c2 = (w - (c1 / d)[:, None] * u).norm(dim=-1)
        idx = torch.tensor(self.zmatrix, device=x.device)
        pi, pj, pk, pl = (r[:, idx[:, n]] for n in range(4))  # (B, m, 3)
        e1, e2 = pi - pj, pk - pj
        bonds = e1.norm(dim=-1)
        angles = torch.atan2(torch.linalg.cross(e1, e2, dim=-1).norm(dim=-1), (e1 * e2).sum(-1))
        tors = _dihedral_points(pi, pj, pk, pl)
        return torch.cat([d.log()[:, None], c1[:, None], c2.log()[:, None], bonds, angles, tors], 1)

    def _log_volume(self, s: Tensor) -> Tensor:
        """``3 log d + 2 log c2 + Σ (2 log b + log sin θ)`` of raw coordinates ``s``."""
        return (
            3 * s[:, 0]
            + 2 * s[:, 2]
            + (2 * s[:, self.bond_cols].log() + s[:, self.angle_cols].sin().log()).sum(1)
        )

    def _place(self, s: Tensor) -> Tensor:
        """Atoms ``(B, N, 3)`` from raw ``s``: ``r_a = 0``, ``r_b`` on +x, ``r_c`` in the xy half-plane y > 0 (NeRF)."""
        n = s.shape[0]
        a, b, c = self.frame
        zero = s.new_zeros(n)
        pos: list[Tensor | None] = [None] * self.n_atoms
        pos[a] = s.new_zeros(n, 3)
        pos[b] = torch.stack([s[:, 0].exp(), zero, zero], -1)
        pos[c] = torch.stack([s[:, 1], s[:, 2].exp(), zero], -1)
        bonds, angles, tors = s[:, self.bond_cols], s[:, self.angle_cols], s[:, self.torsion_cols]
        for q, (i, j, k, l) in enumerate(self.zmatrix):
            rj, rk, rl = pos[j], pos[k], pos[l]
            assert rj is not None and rk is not None and rl is not None  # guaranteed by _check_zmatrix
            bc = rj - rk
            bc = bc / bc.norm(dim=-1, keepdim=True)
            nv = torch.linalg.cross(rk - rl, bc, dim=-1)
            nv = nv / nv.norm(dim=-1, keepdim=True)
            mv = torch.linalg.cross(nv, bc, dim=-1)
            bq, th, tq = bonds[:, q : q + 1], angles[:, q : q + 1], tors[:, q : q + 1]
            pos[i] = rj - bq * th.cos() * bc + bq * th.sin() * (tq.cos() * mv + tq.sin() * nv)
        return torch.stack(pos, 1)  # type: ignore[arg-type]

    # -- torsion chart ---------------------------------------------------------------------------------

    def _chart(self, s: Tensor) -> tuple[Tensor, Tensor]:
        """Raw ``s`` -> ``y`` (torsions shifted, wrapped, ``v = atanh(τ/π)``) and ``log|det ∂y/∂s|``."""
        shift = self.shift.to(s.device, s.dtype)
        t = torch.remainder(s[:, self.torsion_cols] - shift + math.pi, 2 * math.pi) - math.pi
        v = torch.atanh((t / math.pi).clamp(-1 + _TORSION_EPS, 1 - _TORSION_EPS))
        y = torch.cat([s[:, : self.torsion_cols.start], v], 1)
        return y, -_log_pi_sech2(v).sum(1)

    def _unchart(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """``y`` -> raw ``s`` (torsions ``π tanh(v) + shift``, not wrapped) and ``log|det ∂s/∂y|``."""
        v = y[:, self.torsion_cols]
        tors = math.pi * torch.tanh(v) + self.shift.to(y.device, y.dtype)
        return torch.cat([y[:, : self.torsion_cols.start], tors], 1), _log_pi_sech2(v).sum(1)

    # -- public API ------------------------------------------------------------------------------------

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x: (B, 3N)`` -> ``(y: (B, 3N-6), log|det ∂y/∂x|: (B,))`` on the internal degrees of freedom.

        Invariant to translations and rotations of ``x`` (a reflection flips the torsions).
        """
        s = self._raw(x)
        y, ldc = self._chart(s)
        return y, ldc - self._log_volume(s)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """``y: (B, 3N-6)`` -> ``(x: (B, 3N), log|det ∂x/∂y|: (B,))``, ``x`` centred in the canonical frame.

        The canonical orientation puts ``r_b - r_a`` on +x and ``r_c`` in the xy-plane (y > 0); the centre of
        geometry is then subtracted (that changes no volume: see the class docstring). Outside the chart
        (:meth:`in_chart` false) ``x`` is some configuration and ``ladj`` NaN.
        """
        if y.dim() != 2 or y.shape[1] != self.dim:
            raise ValueError(f"y must have shape (B, {self.dim}), got {tuple(y.shape)}")
        s, lds = self._unchart(y)
        r = self._place(s)
        x = (r - r.mean(1, keepdim=True)).reshape(y.shape[0], -1)
        return x, lds + self._log_volume(s)

    def in_chart(self, y: Tensor) -> Tensor:
        """``(B,)`` bool: ``y`` finite, every bond ``> 0`` and every angle in ``(0, π)``."""
        ang = y[:, self.angle_cols]
        return (
            torch.isfinite(y).all(1)
            & (y[:, self.bond_cols] > 0).all(1)
            & (ang > 0).all(1)
            & (ang < math.pi).all(1)
        )

    def torsion(self, y: Tensor) -> Tensor:
        """The Z-matrix torsions ``τ: (B, m)`` of ``y`` in radians, wrapped into ``[-π, π)``."""
        s, _ = self._unchart(y)
        return torch.remainder(s[:, self.torsion_cols] + math.pi, 2 * math.pi) - math.pi

    def torsion_row(self, atoms: Sequence[int]) -> int:
        """Index of the Z-matrix row whose torsion is ``dihedral(atoms)`` (in either direction)."""
        t = tuple(int(a) for a in atoms)
        for q, row in enumerate(self.zmatrix):
            if row in (t, t[::-1]):
                return q
        raise ValueError(f"no Z-matrix row has the torsion {t}; rows are {self.zmatrix}")


class AlanineDipeptideInternal(Energy):
    r"""Alanine dipeptide as a Boltzmann target over 60 internal coordinates (FAB-style frame + Z-matrix).

    ``y = InternalCoordinates(ALDP_ZMATRIX, ALDP_FRAME, shift=ALDP_TORSION_SHIFT)(x)`` (see
    :class:`InternalCoordinates` for the layout, the torsion chart and the measure) and

    .. math:: E_\mathrm{int}(y) = E(x(y)) - \log\lvert\det \partial x / \partial y\rvert,

    so ``exp(-E_int)`` is the Boltzmann density ``exp(-E(x))`` of :class:`AlanineDipeptide` pushed to the
    internal coordinates, translation and rotation integrated out. Normalising constants: with ``Z`` of
    the 63 CoM-free Helmert coordinates (:func:`com_free_basis`),
    ``log Z_int = log Z + (3/2) log 22 - log(8π²)``. Points outside the chart (a bond ``<= 0``, an angle
    outside ``(0, π)``, non-finite) get ``energy_max`` and a zero gradient, so importance weights of such
    proposals are 0 and the estimators stay exact. Gradients flow through the NeRF placement (pure
    torch, float64) into OpenMM's forces. A maximum-likelihood RealNVP on these coordinates reached
    ESS/N ≈ 8 % where Cartesian coordinates gave ≈ 0 (``benchmarks/RESULTS-aldp.md``).

    Args:
        path, temperature, platform, threads, energy_cut, energy_max: as :class:`AlanineDipeptide`.
        shift: torsion offsets (default :data:`ALDP_TORSION_SHIFT`).

    Attributes:
        cartesian: the :class:`AlanineDipeptide` energy (``md_samples``, ``kT``, atom names...).
        coords: the :class:`InternalCoordinates` map.

    Example (needs OpenMM and the data files)::

        target = AlanineDipeptideInternal("/path/to/alanine_dipeptide")
        y = target.reference_samples(20_000, seed=0)   # (20000, 60): internal coordinates of cached MD
        e = target.energy(y[:8].double())              # (8,) = E(x) - log|det dx/dy|, in kT
        x = target.to_cartesian(y[:8])                 # (8, 66) nm, centred, canonical orientation
        angles = target.phi_psi(y)                     # (20000, 2) radians, read off the torsions
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        temperature: float = 300.0,
        platform: str = "Reference",
        threads: int | None = None,
        energy_cut: float = 1e8,
        energy_max: float = 1e20,
        shift: Sequence[float] | Tensor | None = ALDP_TORSION_SHIFT,
    ) -> None:
        cartesian = AlanineDipeptide(
            path,
            temperature=temperature,
            platform=platform,
            threads=threads,
            energy_cut=energy_cut,
            energy_max=energy_max,
        )
        coords = InternalCoordinates(ALDP_ZMATRIX, ALDP_FRAME, ALDP_N_ATOMS, shift=shift)
        super().__init__(dim=coords.dim, log_z=None)
        self.cartesian, self.coords = cartesian, coords
        self.energy_max = cartesian.energy_max
        _check_zmatrix_bonds(cartesian._prmtop.topology, ALDP_FRAME, ALDP_ZMATRIX)
        self._phi_row = coords.torsion_row(cartesian.phi_atoms)
        self._psi_row = coords.torsion_row(cartesian.psi_atoms)
        y0, _ = coords(cartesian.initial_positions())
        self.register_buffer("_safe", y0, persistent=False)  # an in-chart point for masked rows

    def energy(self, y: Tensor) -> Tensor:
        """``E(x(y)) - log|det ∂x/∂y|`` in kT, ``y: (B, 60) -> (B,)`` (same dtype as ``y``; differentiable once)."""
        self.check(y)
        if not y.is_floating_point():
            raise TypeError(f"internal coordinates must be floating point, got {y.dtype}")
        yd = y.to(torch.float64)
        ok = self.coords.in_chart(yd)
        safe = torch.where(ok[:, None], yd, self._safe.to(yd.device))
        x, ladj = self.coords.inverse(safe)
        e = self.cartesian.energy(x) - ladj
        e = torch.where(ok, e, torch.full_like(e, self.energy_max))
        return e.to(y.dtype)

    def to_cartesian(self, y: Tensor) -> Tensor:
        """``(B, 60) -> (B, 66)`` nm: centred, in the canonical orientation of :meth:`InternalCoordinates.inverse`."""
        return self.coords.inverse(y)[0]

    def from_cartesian(self, x: Tensor) -> Tensor:
        """``(B, 66)`` nm -> ``(B, 60)`` internal coordinates (any position and orientation)."""
        return self.coords(x)[0]

    def phi_psi(self, y: Tensor) -> Tensor:
        """``(φ, ψ)`` in radians in ``[-π, π)``, ``(B, 60) -> (B, 2)``, read off the chart's torsions."""
        t = self.coords.torsion(y)
        return t[:, [self._phi_row, self._psi_row]]

    @property
    def params(self) -> dict[str, Any]:
        return self.cartesian.params | {"coordinates": "internal", "shift": self.coords.shift.tolist()}

    def reference_samples(
        self, n: int, seed: int = 0, cache_dir: str | os.PathLike[str] | None = None, **md: Any
    ) -> Tensor:
        """Internal coordinates ``(n, 60)`` float32 of :meth:`AlanineDipeptide.md_samples` (same cache).

        Keyword options go to ``md_samples``; the defaults are those of ``benchmarks/aldp_is.py``, so a
        trajectory cached by one serves the other (``$FLOWFORGE_CACHE`` / ``cache_dir``).
        """
        x = self.cartesian.md_samples(n, seed=seed, cache_dir=cache_dir, **md)
        return self.coords(x.to(torch.float64))[0].to(torch.float32)


def _check_zmatrix_bonds(
    topology: Any, frame: tuple[int, int, int], zmatrix: tuple[tuple[int, int, int, int], ...]
) -> None:
    """Every frame pair (a-b, a-c) and every Z-matrix pair i-j, j-k must be a bond of the topology."""
    bonds = {frozenset((b[0].index, b[1].index)) for b in topology.bonds()}
    a, b, c = frame
    pairs = [(a, b), (a, c)] + [(i, j) for i, j, _, _ in zmatrix] + [(j, k) for _, j, k, _ in zmatrix]
    missing = sorted({p for p in pairs if frozenset(p) not in bonds})
    if missing:
        raise ValueError(
            f"the alanine-dipeptide Z-matrix does not fit this topology: atom pairs {missing} are not bonded; "
            "use the openmmtools Ace-Ala-Nme vacuum files (22 atoms, ACE H1 CH3 H2 H3 C O, ALA N H CA HA CB ...)"
        )


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _find_files(path: str | os.PathLike[str] | None) -> tuple[Path, Path]:
    if path is None:
        env = os.environ.get("FLOWFORGE_ALDP_DIR")
        if not env:
            raise ValueError(
                "AlanineDipeptide needs the directory of the Amber files "
                f"{ALDP_FILES['prmtop']} and {ALDP_FILES['crd']} (as distributed with openmmtools); write "
                "AlanineDipeptide('/path/to/alanine_dipeptide') or set FLOWFORGE_ALDP_DIR"
            )
        path = env
    p = Path(path).expanduser()
    if p.suffix == ".prmtop":
        prmtop, crd = p, p.with_suffix(".crd")
    else:
        prmtop, crd = p / ALDP_FILES["prmtop"], p / ALDP_FILES["crd"]
    missing = [str(f) for f in (prmtop, crd) if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"alanine dipeptide files not found: {', '.join(missing)}; pass the directory that holds "
            f"{ALDP_FILES['prmtop']} and {ALDP_FILES['crd']} (Amber vacuum files as distributed with "
            "openmmtools), or the path of the .prmtop with the .crd next to it"
        )
    return prmtop, crd


def _backbone_dihedrals(topology: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """φ and ψ atom indices from residue / atom names (ACE C, ALA N CA C, NME N)."""
    index: dict[tuple[str, str], int] = {}
    for atom in topology.atoms():
        index.setdefault((atom.residue.name, atom.name), atom.index)
    want = [("ACE", "C"), ("ALA", "N"), ("ALA", "CA"), ("ALA", "C"), ("NME", "N")]
    missing = [w for w in want if w not in index]
    if missing:
        raise ValueError(f"topology lacks backbone atoms {missing}; is this Ace-Ala-Nme?")
    c0, n1, ca, c1, n2 = (index[w] for w in want)
    return (c0, n1, ca, c1), (n1, ca, c1, n2)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _atomic_write(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
