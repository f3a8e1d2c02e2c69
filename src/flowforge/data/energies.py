r"""Boltzmann targets :math:`\pi(x) = e^{-E(x)}/Z` (energies in kT) and a loader for user energies.

Every energy is an :class:`Energy` (an ``nn.Module``, so constants follow ``.to(device, dtype)``):
``energy(x: (B, D)) -> (B,)``, ``__call__`` = ``energy``, ``log_prob = -energy`` (unnormalised),
``dim``, ``log_z`` (the known :math:`\log Z`, else ``None``), ``sample(n, generator)`` where an exact
sampler exists, and ``reference_samples(n, seed, cache_dir)`` (exact samples, or our own long parallel-
tempering MALA runs cached on disk).

- :class:`GMM40` (D = 2): the 40-mode Gaussian mixture of fab-torch / DEM; log Z = 0; exact samples.
- :class:`ManyWell` (D = 32): 16 copies of fab-torch's 2-D double well; log Z = 164.6957; exact samples.
- :class:`DoubleWell4` (D = 8): DW-4, bgflow's ``MultiDoubleWellPotential``; log Z unknown; PT-MALA reference.
- :class:`LennardJones13` (D = 39): LJ-13 with harmonic oscillator (DEM); log Z unknown; PT-MALA reference.
- :func:`user_energy`: any ``module:function`` energy, validated on a probe batch.

References: Noé et al., "Boltzmann generators", Science 2019 (DW, LJ); Köhler et al., "Equivariant flows",
ICML 2020 (DW-4, LJ-13); Midgley et al., "Flow annealed importance sampling bootstrap" (FAB), ICLR 2023
(GMM-40, many-well); Akhound-Sadegh et al., "Iterated denoising energy matching" (DEM), ICML 2024.

Example:
    >>> e = GMM40()
    >>> x = e.sample(3, generator=torch.Generator().manual_seed(0))
    >>> e(x).shape, e.dim, e.log_z
    (torch.Size([3]), 2, 0.0)
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from flowforge.core.choices import unknown_choice
from flowforge.core.mcmc import parallel_tempering
from flowforge.data.user_code import import_target

# numpy < 2 calls it trapz
_trapezoid = getattr(np, "trapezoid", None) or np.trapz

__all__ = [
    "DoubleWell4",
    "Energy",
    "GMM40",
    "LennardJones13",
    "ManyWell",
    "default_cache_dir",
    "remove_mean",
    "user_energy",
]

CACHE_VERSION = 1  # bump when the reference-sampling procedure changes (invalidates old cache files)


def default_cache_dir() -> Path:
    """``$FLOWFORGE_CACHE/reference`` when the variable is set, else ``~/.cache/flowforge/reference``."""
    root = os.environ.get("FLOWFORGE_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "flowforge") / "reference"


def remove_mean(x: Tensor, n_particles: int, spatial_dim: int) -> Tensor:
    """Subtract each configuration's centre of mass: ``(B, N*d) -> (B, N*d)``.

    Example:
        >>> remove_mean(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), 2, 2)
        tensor([[-1., -1.,  1.,  1.]])
    """
    p = x.reshape(x.shape[0], n_particles, spatial_dim)
    return (p - p.mean(1, keepdim=True)).reshape(x.shape)


def _atomic_save(path: Path, array: np.ndarray, info: dict[str, Any]) -> None:
    """Write ``array`` to ``path`` (.npy) and ``info`` next to it (.json), each via a temp file + rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for target, write in (
        (path.with_suffix(".json"), lambda f: f.write(json.dumps(info, indent=2).encode())),
        (path, lambda f: np.save(f, array)),  # the .npy last: its presence marks a complete entry
    ):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class Energy(nn.Module):
    r"""An energy :math:`E(x)` in kT of a target :math:`\pi(x) = e^{-E(x)}/Z` on :math:`\mathbb{R}^D`.

    Subclasses implement :meth:`energy` and, where they can, :meth:`sample`; ``params`` (a dict of the
    constructor's settings) names the energy in reference-sample cache keys.

    Attributes:
        dim: :math:`D`.
        log_z: :math:`\log Z` when known, else ``None``.
    """

    dim: int
    log_z: float | None = None

    def __init__(self, dim: int, log_z: float | None = None) -> None:
        super().__init__()
        self.dim = int(dim)
        self.log_z = log_z

    @property
    def params(self) -> dict[str, Any]:
        return {}

    def check(self, x: Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` has shape ``(B, dim)``."""
        if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != self.dim:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"{type(self).__name__} takes points of shape (B, {self.dim}); got {got}; pass a batch of "
                f"{self.dim}-dimensional points, e.g. x.reshape(-1, {self.dim})"
            )

    def energy(self, x: Tensor) -> Tensor:
        """``E(x)`` in kT, ``(B, D) -> (B,)``."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.energy(x)

    def log_prob(self, x: Tensor) -> Tensor:
        """Unnormalised :math:`\\log \\pi(x) = -E(x)` (subtract ``log_z`` for the normalised one)."""
        return -self.energy(x)

    @property
    def has_exact_sampler(self) -> bool:
        return type(self).sample is not Energy.sample

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Exact samples ``(n, D)``; energies without an exact sampler raise ``NotImplementedError``."""
        raise NotImplementedError(
            f"{type(self).__name__} has no exact sampler; use reference_samples(n) (cached long MCMC runs)"
        )

    # -- reference samples -------------------------------------------------------------------------

    def reference_settings(self) -> dict[str, Any]:
        """Default settings of the reference MCMC run (see :meth:`reference_samples`)."""
        return {}

    def _reference_init(self, n: int, generator: torch.Generator) -> Tensor:
        return torch.randn(n, self.dim, generator=generator, dtype=torch.float64)

    def _reference_post(self, x: Tensor) -> Tensor:
        return x

    def reference_samples(
        self,
        n: int,
        seed: int = 0,
        cache_dir: str | os.PathLike[str] | None = None,
        **settings: Any,
    ) -> Tensor:
        """``n`` samples ``(n, D)`` of the target in float32: exact where :meth:`sample` exists, else ours.

        Without an exact sampler this runs parallel-tempering MALA (:func:`flowforge.core.mcmc.parallel_tempering`)
        in float64: ``chains`` independent ladders at inverse temperatures ``betas``, ``burn_in``
        iterations of step-size adaptation, then one sample per chain every ``thin`` iterations until
        ``n`` are collected. The result is cached as ``<cache_dir>/<Name>-<hash>.npy`` (+ ``.json`` with
        the settings and acceptance rates) keyed by the energy's parameters, the settings, ``n`` and
        ``seed``; files are written atomically, so concurrent runs never read a partial file.

        Args:
            n: number of samples.
            seed: seeds the sampler's ``torch.Generator``.
            cache_dir: where to cache; default :func:`default_cache_dir` (``$FLOWFORGE_CACHE/reference`` or
                ``~/.cache/flowforge/reference``).
            settings: override :meth:`reference_settings` (``chains``, ``betas``, ``burn_in``, ``thin``,
                ``step_size``, ``mala_steps``).
        """
        if n < 1:
            raise ValueError(f"reference_samples needs n >= 1, got {n}; ask for at least one sample")
        gen = torch.Generator().manual_seed(int(seed))
        if self.has_exact_sampler:
            return self.sample(n, generator=gen).float()
        s = self.reference_settings()
        if not s and not settings:
            raise ValueError(
                f"{type(self).__name__} has no exact sampler and no reference-MCMC settings; pass held-out "
                "samples (flowforge eval --data FILE), or give settings: chains, betas, burn_in, thin, "
                "step_size, mala_steps"
            )
        unknown = set(settings) - set(s) if s else set()
        if unknown:
            raise ValueError(f"unknown reference settings {sorted(unknown)}; known: {sorted(s)}")
        s.update(settings)
        key = {
            "energy": type(self).__name__,
            "params": self.params,
            "settings": s,
            "n": n,
            "seed": int(seed),
            "version": CACHE_VERSION,
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        path = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        path = path / f"{type(self).__name__}-{digest}.npy"
        if path.is_file():
            arr = np.load(path, allow_pickle=False)
            if arr.shape == (n, self.dim):
                return torch.from_numpy(arr)
        x, info = self._run_reference(n, gen, s)
        arr = x.float().numpy()
        _atomic_save(path, arr, key | info)
        return torch.from_numpy(arr)

    def _run_reference(
        self, n: int, gen: torch.Generator, s: dict[str, Any]
    ) -> tuple[Tensor, dict[str, Any]]:
        chains = int(min(n, s["chains"]))
        per_chain = -(-n // chains)
        energy = copy.deepcopy(self).to("cpu", torch.float64)  # float64 chains; self is left as it is
        out = parallel_tempering(
            energy,
            self._reference_init(chains, gen),
            per_chain * s["thin"],
            betas=s["betas"],
            step_size=s["step_size"],
            generator=gen,
            burn_in=s["burn_in"],
            mala_steps=s["mala_steps"],
            thin=s["thin"],
            keep_samples=True,
        )
        assert out.samples is not None
        x = out.samples.transpose(0, 1).reshape(-1, self.dim)[:n]  # chain-major
        info = {
            "accept_rate": [round(float(a), 4) for a in out.accept_rate],
            "swap_rate": [round(float(a), 4) for a in out.swap_rate],
            "final_step_size": [float(h) for h in out.step_size],
        }
        return self._reference_post(x), info

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.params.items())


# ----------------------------------------------------------------------------------------------------
# GMM-40


class GMM40(Energy):
    r"""The 40-mode Gaussian mixture of FAB (Midgley et al., 2023) and DEM (Akhound-Sadegh et al., 2024).

    .. math::

        \pi(x) = \frac{1}{K}\sum_{k=1}^{K} N(x;\ \mu_k,\ \sigma^2 I), \qquad
        \mu_k = 2\,s\,(u_k - \tfrac12),\ u_k \sim U[0, 1)^D, \qquad \sigma = \operatorname{softplus}(1) = 1.3133,

    with :math:`K = 40`, :math:`s = 40` (``loc_scaling``) and the :math:`u_k` drawn by ``torch.rand((K, D))``
    from a local ``torch.Generator().manual_seed(seed)`` (the same numbers as fab-torch's
    ``torch.manual_seed(0)``; the first mean is (-0.30, 21.46)). Normalised: ``log_z = 0``. Unlike fab-torch,
    log densities below -1e4 are not set to -inf (that breaks gradients); DEM trains on ``x / 50``.

    Args:
        dim: :math:`D`.
        n_modes: :math:`K`.
        loc_scaling: :math:`s`.
        scale: :math:`\sigma`, default ``softplus(1.0)`` (fab-torch's ``log_var_scaling=1``).
        seed: seed of the means.
    """

    def __init__(
        self,
        dim: int = 2,
        n_modes: int = 40,
        loc_scaling: float = 40.0,
        scale: float | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(dim, log_z=0.0)
        self.n_modes, self.loc_scaling, self.seed = int(n_modes), float(loc_scaling), int(seed)
        self.scale = float(torch.nn.functional.softplus(torch.tensor(1.0))) if scale is None else float(scale)
        u = torch.rand((n_modes, dim), generator=torch.Generator().manual_seed(seed))
        self.register_buffer("means", (u - 0.5) * 2 * loc_scaling)

    @property
    def params(self) -> dict[str, Any]:
        return {"dim": self.dim, "n_modes": self.n_modes, "loc_scaling": self.loc_scaling,
                "scale": self.scale, "seed": self.seed}  # fmt: skip

    def energy(self, x: Tensor) -> Tensor:
        self.check(x)
        mu = self.means.to(x)
        sq = (x.unsqueeze(1) - mu).square().sum(-1)  # (B, K)
        s2 = self.scale**2
        log_n = -0.5 * sq / s2 - 0.5 * self.dim * math.log(2 * math.pi * s2)
        return -(torch.logsumexp(log_n, 1) - math.log(self.n_modes))

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Exact samples: a uniform mode plus :math:`\\sigma` times standard normal noise."""
        mu = self.means
        k = torch.randint(self.n_modes, (n,), generator=generator, device=mu.device)
        z = torch.randn((n, self.dim), generator=generator, device=mu.device, dtype=mu.dtype)
        return mu[k] + self.scale * z


# ----------------------------------------------------------------------------------------------------
# many-well


class _DoubleWell1D:
    r"""The 1-D factor :math:`f(x) = \exp(-x^4 + 6x^2 + x/2)` of the many-well: quadrature and an exact sampler.

    Sampling is rejection sampling from a two-Gaussian proposal centred on the two modes (width 0.45,
    weights = the wells' masses) with envelope :math:`M = 1.01 \max_x f/g` over a grid; acceptance ~ 46 %.
    """

    def __init__(self) -> None:
        x = np.linspace(-8.0, 8.0, 160_001)
        lf = -(x**4) + 6 * x**2 + 0.5 * x
        f = np.exp(lf)
        self.z = float(_trapezoid(f, x))  # spectrally accurate: f is smooth and ~0 at the ends
        roots = np.roots([-4.0, 0.0, 12.0, 0.5]).real
        self.modes = (float(roots.max()), float(roots.min()))
        self.w_plus = float(_trapezoid(f * (x > 0), x) / self.z)
        self.width = 0.45
        lg = self._log_g(x)
        self.log_m = float(np.max(lf - lg)) + math.log(1.01)

    def _log_g(self, x: Any) -> Any:
        lib = torch if isinstance(x, Tensor) else np
        s2 = self.width**2
        c = -0.5 * math.log(2 * math.pi * s2)
        a = math.log(self.w_plus) + c - (x - self.modes[0]) ** 2 / (2 * s2)
        b = math.log(1 - self.w_plus) + c - (x - self.modes[1]) ** 2 / (2 * s2)
        return lib.logaddexp(a, b)

    def sample(self, n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        out: list[Tensor] = []
        have = 0
        while have < n:
            m = int(2.3 * (n - have)) + 16
            plus = torch.rand(m, generator=generator, device=device, dtype=torch.float64) < self.w_plus
            mode = torch.where(plus, self.modes[0], self.modes[1])
            x = mode + self.width * torch.randn(m, generator=generator, device=device, dtype=torch.float64)
            log_ratio = -(x**4) + 6 * x**2 + 0.5 * x - self._log_g(x) - self.log_m
            u = torch.rand(m, generator=generator, device=device, dtype=torch.float64)
            keep = x[torch.log(u) < log_ratio]
            out.append(keep)
            have += keep.numel()
        return torch.cat(out)[:n]


_DW1D: _DoubleWell1D | None = None


def _dw1d() -> _DoubleWell1D:
    global _DW1D
    if _DW1D is None:
        _DW1D = _DoubleWell1D()
    return _DW1D


class ManyWell(Energy):
    r"""Many-well (FAB, Midgley et al., 2023): :math:`D/2` independent copies of a 2-D double well,

    .. math::

        E(x) = \sum_{k=1}^{D/2} \big(x_{2k-1}^4 - 6x_{2k-1}^2 - \tfrac12 x_{2k-1}\big) + \tfrac12 x_{2k}^2,

    i.e. fab-torch's ``DoubleWellEnergy(a=-0.5, b=-6, c=1)`` on each consecutive pair. :math:`2^{D/2}`
    modes at :math:`x_{2k-1} \approx -1.71, 1.75` (the deeper well at +1.75 holds 84 % of the mass).
    :math:`\log Z = \tfrac D2(\log Z_1 + \tfrac12\log 2\pi)` with :math:`Z_1 = \int e^{-x^4+6x^2+x/2}dx =
    11784.51` by quadrature, so ``log_z = 164.6957`` for ``dim=32``. Exact sampler: rejection sampling for
    the double-well coordinates, standard normal for the others.

    Example:
        >>> round(ManyWell(32).log_z, 4)
        164.6957
    """

    def __init__(self, dim: int = 32) -> None:
        if dim < 2 or dim % 2:
            raise ValueError(
                f"ManyWell needs an even dim >= 2 (pairs of coordinates), got {dim}; write e.g. dim=32 (the default)"
            )
        dw = _dw1d()
        super().__init__(dim, log_z=dim / 2 * (math.log(dw.z) + 0.5 * math.log(2 * math.pi)))

    @property
    def params(self) -> dict[str, Any]:
        return {"dim": self.dim}

    def energy(self, x: Tensor) -> Tensor:
        self.check(x)
        a, b = x[:, 0::2], x[:, 1::2]
        return (a**4 - 6 * a**2 - 0.5 * a).sum(1) + 0.5 * b.square().sum(1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        dev = generator.device if generator is not None else torch.device("cpu")
        a = _dw1d().sample(n * (self.dim // 2), generator, dev).view(n, self.dim // 2)
        b = torch.randn((n, self.dim // 2), generator=generator, device=dev, dtype=torch.float64)
        return torch.stack([a, b], 2).reshape(n, self.dim).float()


# ----------------------------------------------------------------------------------------------------
# particle systems


def _unique_sq_distances(x: Tensor, n_particles: int, spatial_dim: int) -> Tensor:
    """Squared pair distances :math:`d_{ij}^2`, :math:`i < j`: ``(B, N*d) -> (B, N(N-1)/2)``."""
    p = x.reshape(x.shape[0], n_particles, spatial_dim)
    i, j = torch.triu_indices(n_particles, n_particles, 1, device=x.device)
    return (p[:, i] - p[:, j]).square().sum(-1)


def _unique_distances(x: Tensor, n_particles: int, spatial_dim: int) -> Tensor:
    """Pair distances :math:`d_{ij}`, :math:`i < j`: ``(B, N*d) -> (B, N(N-1)/2)`` (safe gradient at 0)."""
    return torch.sqrt(_unique_sq_distances(x, n_particles, spatial_dim).clamp(min=1e-12))


class _Particles(Energy):
    """Shared: ``N`` particles in ``d`` dimensions, translation invariance handled by ``com``."""

    def __init__(self, n_particles: int, spatial_dim: int, com: str) -> None:
        if com not in ("gaussian", "free"):
            raise unknown_choice("com", com, ("gaussian", "free"))
        if int(n_particles) < 2 or int(spatial_dim) < 1:
            raise ValueError(
                f"a particle system needs n_particles >= 2 and spatial_dim >= 1, got {n_particles} and "
                f"{spatial_dim}; write e.g. n_particles=4, spatial_dim=2"
            )
        super().__init__(n_particles * spatial_dim)
        self.n_particles, self.spatial_dim, self.com = int(n_particles), int(spatial_dim), com

    def com_energy(self, x: Tensor) -> Tensor:
        r""":math:`\tfrac N2 \lVert\bar x\rVert^2` (``com="gaussian"``), else 0."""
        if self.com == "free":
            return x.new_zeros(x.shape[0])
        c = x.reshape(x.shape[0], self.n_particles, self.spatial_dim).mean(1)
        return 0.5 * self.n_particles * c.square().sum(1)

    def _reference_init(self, n: int, generator: torch.Generator) -> Tensor:
        # particles on a cubic lattice of spacing `self._lattice` plus a little noise: no overlaps
        side = math.ceil(self.n_particles ** (1 / self.spatial_dim))
        grid = torch.cartesian_prod(*[torch.arange(side, dtype=torch.float64)] * self.spatial_dim)
        grid = grid.reshape(-1, self.spatial_dim)[: self.n_particles] * self._lattice
        x = grid.reshape(1, -1) + 0.05 * torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return remove_mean(x, self.n_particles, self.spatial_dim)

    def _reference_post(self, x: Tensor) -> Tensor:
        return remove_mean(x, self.n_particles, self.spatial_dim) if self.com == "free" else x

    _lattice = 1.0


_COM_DOC = r"""
    Translations. The pair energy is translation invariant, so :math:`e^{-E}` is not normalisable on
    :math:`\mathbb{R}^{Nd}`. ``com="gaussian"`` (default) adds :math:`\tfrac N2\lVert\bar x\rVert^2`, a standard
    normal on the unit-norm centre-of-mass coordinate :math:`\sqrt N \bar x`: the target factorises into
    the usual CoM-free Boltzmann density times :math:`N(0, I_d)` for the CoM, so a flow with a standard
    normal base on all :math:`Nd` coordinates can be trained and importance-weighted directly
    (:math:`Z = Z_\text{CoM-free}\,(2\pi)^{d/2}`). On CoM-free points (as in the published data sets) the
    energy is unchanged. ``com="free"`` returns the invariant energy, for flows that live on the CoM-free
    subspace; its reference samples have their mean removed."""


class DoubleWell4(_Particles):
    r"""DW-4 (Köhler et al., 2020): 4 particles in 2-D with a double-well pair potential, :math:`D = 8`.

    .. math::

        E(x) = \sum_{i<j} a\,(d_{ij} - d_0)^4 + b\,(d_{ij} - d_0)^2 + c, \qquad d_{ij} = \lVert x_i - x_j\rVert,

    with bgflow's ``MultiDoubleWellPotential(dim=8, n_particles=4, a=0.9, b=-4, c=0, offset=4)`` (unique
    pairs: its older ordered-pair version divides by 2), kT = 1: pair minima at :math:`d = 4 \pm 1.49`,
    barrier 4.44 kT. Particles are ``x.view(B, 4, 2)``.
    """

    __doc__ = (__doc__ or "") + _COM_DOC

    _lattice = 4.0

    def __init__(
        self,
        n_particles: int = 4,
        spatial_dim: int = 2,
        a: float = 0.9,
        b: float = -4.0,
        c: float = 0.0,
        offset: float = 4.0,
        com: Literal["gaussian", "free"] = "gaussian",
    ) -> None:
        super().__init__(n_particles, spatial_dim, com)
        self.a, self.b, self.c, self.offset = float(a), float(b), float(c), float(offset)

    @property
    def params(self) -> dict[str, Any]:
        return {"n_particles": self.n_particles, "spatial_dim": self.spatial_dim, "a": self.a, "b": self.b,
                "c": self.c, "offset": self.offset, "com": self.com}  # fmt: skip

    def energy(self, x: Tensor) -> Tensor:
        self.check(x)
        s = _unique_distances(x, self.n_particles, self.spatial_dim) - self.offset
        return (self.a * s**4 + self.b * s**2 + self.c).sum(1) + self.com_energy(x)

    def reference_settings(self) -> dict[str, Any]:
        return {"chains": 256, "betas": [1.0, 0.5, 0.25], "burn_in": 2000, "thin": 50, "step_size": 0.05,
                "mala_steps": 1}  # fmt: skip


class LennardJones13(_Particles):
    r"""LJ-13 (Köhler et al., 2020; DEM): 13 particles in 3-D, Lennard-Jones plus a harmonic oscillator, :math:`D = 39`.

    .. math::

        E(x) = c_\text{pairs}\,\varepsilon \sum_{i<j} u(d_{ij}/r_m) + \tfrac{k}{2} \sum_i \lVert x_i - \bar x\rVert^2,
        \qquad u(r) = r^{-12} - 2 r^{-6},

    with :math:`\varepsilon = r_m = k = 1`, kT = 1. **Pair convention**: ``pairs="unique"`` (default,
    :math:`c_\text{pairs} = 1`) sums each pair once, the physical convention (bgflow's ``energy_factor=0.5``
    on ordered pairs, which DEM's code comment says matches the EACF reference energies);
    ``pairs="ordered"`` (:math:`c_\text{pairs} = 2`) sums over ordered pairs :math:`i \ne j`, exactly DEM /
    iDEM's ``LennardJonesPotential(eps=1, rm=1, oscillator=True, energy_factor=1)``: use it to compare with
    their energies. The two are different targets (the ordered one is the unique one at kT = 1/2).

    **Soft core** (numerical safety): below :math:`r_\text{min}` = ``soft_core`` :math:`\cdot r_m` (default 0.6)
    the pair term is continued linearly with the value and slope of :math:`u` at :math:`r_\text{min}`
    (:math:`u = 416,\ u' = -8760` at 0.6), so overlapping particles (flow samples, MCMC proposals) get a
    finite energy and a gradient that pushes them apart instead of overflowing. At kT = 1 such distances
    have Boltzmann weight below :math:`e^{-400}`: the target is unchanged to any measurable precision.
    ``soft_core=0`` turns it off.
    """

    __doc__ = (__doc__ or "") + _COM_DOC

    _lattice = 1.1

    def __init__(
        self,
        n_particles: int = 13,
        spatial_dim: int = 3,
        eps: float = 1.0,
        rm: float = 1.0,
        oscillator_scale: float = 1.0,
        pairs: Literal["unique", "ordered"] = "unique",
        soft_core: float = 0.6,
        com: Literal["gaussian", "free"] = "gaussian",
    ) -> None:
        if pairs not in ("unique", "ordered"):
            raise unknown_choice(
                "pairs",
                pairs,
                ("unique", "ordered"),
                hint="'unique' sums each pair once, 'ordered' is DEM's i != j sum",
            )
        if not 0 <= soft_core < 1:
            raise ValueError(
                f"soft_core is a fraction of rm in [0, 1), got {soft_core}; write e.g. soft_core=0.6"
            )
        super().__init__(n_particles, spatial_dim, com)
        self.eps, self.rm, self.oscillator_scale = float(eps), float(rm), float(oscillator_scale)
        self.pairs, self.soft_core = pairs, float(soft_core)

    @property
    def params(self) -> dict[str, Any]:
        return {"n_particles": self.n_particles, "spatial_dim": self.spatial_dim, "eps": self.eps, "rm": self.rm,
                "oscillator_scale": self.oscillator_scale, "pairs": self.pairs, "soft_core": self.soft_core,
                "com": self.com}  # fmt: skip

    def pair_energy(self, r: Tensor) -> Tensor:
        """:math:`u(r)` with the linear soft core below ``soft_core`` (``r`` in units of ``rm``)."""
        return self._pair_energy_sq(r.square())

    def _pair_energy_sq(self, sq: Tensor) -> Tensor:
        """:math:`u` from squared distances: :math:`s^3 (s^3 - 2)` with :math:`s = 1/r^2` (no powers, no sqrt)."""
        r0 = self.soft_core
        s = 1.0 / sq.clamp(min=max(r0, 1e-6) ** 2)
        s3 = s * s * s
        u = s3 * (s3 - 2.0)
        if r0 <= 0:
            return u
        u0, du0 = r0**-12 - 2 * r0**-6, -12 * r0**-13 + 12 * r0**-7
        r = torch.sqrt(sq.clamp(min=1e-12))
        return torch.where(sq < r0 * r0, u0 + du0 * (r - r0), u)

    def energy(self, x: Tensor) -> Tensor:
        self.check(x)
        sq = _unique_sq_distances(x, self.n_particles, self.spatial_dim) / (self.rm * self.rm)
        lj = self.eps * self._pair_energy_sq(sq).sum(1) * (2.0 if self.pairs == "ordered" else 1.0)
        p = x.reshape(x.shape[0], self.n_particles, self.spatial_dim)
        osc = 0.5 * self.oscillator_scale * (p - p.mean(1, keepdim=True)).square().sum((1, 2))
        return lj + osc + self.com_energy(x)

    def reference_settings(self) -> dict[str, Any]:
        return {"chains": 256, "betas": [1.0, 0.7, 0.5], "burn_in": 2000, "thin": 50, "step_size": 1e-3,
                "mala_steps": 1}  # fmt: skip


# ----------------------------------------------------------------------------------------------------
# user energies


class FunctionEnergy(Energy):
    """An :class:`Energy` around a plain callable ``f(x: (B, D)) -> (B,)`` (what :func:`user_energy` returns)."""

    def __init__(
        self, fn: Callable[[Tensor], Tensor], dim: int, log_z: float | None = None, name: str = ""
    ) -> None:
        super().__init__(dim, log_z)
        self.fn, self.name = fn, name or getattr(fn, "__name__", "energy")

    @property
    def params(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim}

    def energy(self, x: Tensor) -> Tensor:
        self.check(x)
        return self.fn(x)


def user_energy(spec: str, dim: int | None = None, *, log_z: float | None = None, probe: int = 8) -> Energy:
    r"""Load a user's energy from ``"module:function"`` (or ``"path/to/file.py:function"``) and validate it.

    The target may be a function ``E(x: (B, D)) -> (B,)`` in kT, an :class:`Energy` instance, or an
    :class:`Energy` subclass with a no-argument constructor. It is called once on a probe batch of
    ``probe`` standard normal points (float32, seed 0) and must return a finite floating tensor of shape
    ``(probe,)`` in the input's dtype; otherwise a ``ValueError`` says what was wrong and what to write.

    Args:
        spec: ``"module:function"``; dotted attributes (``"mod:obj.method"``) are allowed.
        dim: :math:`D`; read from the target's ``dim`` attribute when omitted.
        log_z: known :math:`\log Z`, if any (overrides the target's ``log_z``).
        probe: size of the probe batch.

    Example:
        >>> e = user_energy("flowforge.data.energies:_example_energy", dim=3)
        >>> e(torch.zeros(2, 3))
        tensor([0., 0.])
    """
    obj = import_target(spec, "energy")
    if isinstance(obj, type):
        if issubclass(obj, Energy):
            try:
                obj = obj()
            except TypeError as e:
                raise ValueError(
                    f"{spec!r} is the class {obj.__name__}, which needs constructor arguments ({e}); point "
                    f"to an instance instead, e.g. define 'energy = {obj.__name__}(...)' and write "
                    f"'{spec.rpartition(':')[0]}:energy'"
                ) from e
        else:
            raise ValueError(
                f"{spec!r} is a class, not an energy; point to a function 'def energy(x): return ...' "
                f"mapping (B, D) to (B,), or to an instance"
            )
    if not callable(obj):
        raise ValueError(
            f"{spec!r} is a {type(obj).__name__}, not callable; point to a function 'def energy(x): ...' "
            f"mapping a (B, D) tensor to a (B,) tensor of energies in kT"
        )
    if dim is None:
        dim = getattr(obj, "dim", None)
        if not isinstance(dim, int):
            raise ValueError(
                f"{spec!r} has no integer 'dim' attribute; pass the dimension, e.g. dim=2 (CLI: --set dim=2)"
            )
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(
            f"the energy's dim must be an integer >= 1, got {dim!r}; pass e.g. dim=2 (CLI: --set dim=2)"
        )
    x = torch.randn(probe, dim, generator=torch.Generator().manual_seed(0))
    try:
        out = obj(x)
    except Exception as e:
        raise ValueError(
            f"calling {spec!r} on a probe batch of shape {tuple(x.shape)} raised {type(e).__name__}: {e}. The "
            f"energy must accept a float32 tensor of shape (B, {dim})"
        ) from e
    if not isinstance(out, Tensor):
        raise ValueError(
            f"{spec!r} returned a {type(out).__name__}; return a torch.Tensor of shape (B,) (e.g. "
            f"torch.as_tensor(...)), computed with torch ops if you want gradients"
        )
    if out.shape != (probe,):
        hint = " (use .squeeze(-1) or .sum(-1))" if out.ndim == 2 and out.shape[0] == probe else ""
        raise ValueError(
            f"{spec!r} returned shape {tuple(out.shape)} for input {tuple(x.shape)}; it must return one energy "
            f"per point, shape ({probe},){hint}"
        )
    if not out.is_floating_point() or out.dtype != x.dtype:
        raise ValueError(
            f"{spec!r} returned dtype {out.dtype} for a {x.dtype} input; return energies in the input's "
            f"floating dtype, e.g. 'return e.to(x.dtype)'"
        )
    if not bool(torch.isfinite(out).all()):
        raise ValueError(
            f"{spec!r} returned non-finite energies {out.tolist()} at standard normal points; make the energy "
            f"finite everywhere (e.g. clamp distances or use a soft core) so samplers and weights stay defined"
        )
    if isinstance(obj, Energy):
        obj.log_z = log_z if log_z is not None else obj.log_z
        return obj
    return FunctionEnergy(obj, dim, log_z=log_z, name=spec)


def _example_energy(x: Tensor) -> Tensor:
    """A standard normal energy, for the :func:`user_energy` example."""
    return 0.5 * x.square().sum(-1)
