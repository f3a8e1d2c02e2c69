r"""A family of 2-D bead chains with type-dependent bonds and angles (a toy for transferable Boltzmann generators).

A chain of :math:`n` beads :math:`x_1, \dots, x_n \in \mathbb{R}^2` with types :math:`t_i \in \{0, \dots, K-1\}`
(letters ``A``, ``B``, ``C`` for the default three types) has the energy (in kT)

.. math::

    E(x) = \sum_{i=1}^{n-1} \frac{k_{t_i t_{i+1}}}{2}\big(\lVert b_i\rVert - r_{t_i t_{i+1}}\big)^2
         + \sum_{i=2}^{n-1} \kappa_{t_i}\big(\cos\psi_i - \cos\theta_{t_i}\big)^2
         + \sum_{|i-j| \ge 2} \varepsilon\,\Big(1 - \frac{d_{ij}^2}{\sigma_{t_i t_j}^2}\Big)_+^2
         + \frac n2 \lVert \bar x\rVert^2,

with bond vectors :math:`b_i = x_{i+1} - x_i`, turning angles :math:`\psi_i` between :math:`b_{i-1}` and
:math:`b_i` (0 = straight), :math:`d_{ij} = \lVert x_i - x_j\rVert` and the centre :math:`\bar x`. Rest
lengths and stiffnesses depend on the pair of types (:math:`r_{ab} = \rho_a + \rho_b`,
:math:`k_{ab} = \sqrt{k_a k_b}`), the angle term on the middle bead's type: a type with
:math:`\theta_t = 0` prefers a straight chain, one with :math:`\theta_t \ne 0` has two wells at
:math:`\psi = \pm\theta_t` (a double well in the signed angle, barrier :math:`\kappa_t(1 - \cos\theta_t)^2`
at :math:`\psi = 0`). The soft repulsion keeps non-bonded beads apart.

Invariances. The internal energy is invariant under translations, rotations and reflections of the
plane. As for the particle energies in :mod:`flowforge.data.energies` (``com="gaussian"``), the term
:math:`\tfrac n2\lVert\bar x\rVert^2` gives the centre the density :math:`N(0, I/n)`, so the target is
normalisable on all :math:`2n` coordinates and a flow with a standard normal base can model it
directly; rotations stay a symmetry of the target (flows see random rotations during training).

Reference :math:`\log Z`. Without the repulsion the chain factorises in bond coordinates
(:math:`(x_1, \dots, x_n) \mapsto (\bar x, b_1, \dots, b_{n-1})` has unit Jacobian, and
:math:`d^2 b = r\,dr\,d\varphi`):

.. math::

    Z_0 = \frac{2\pi}{n}\cdot 2\pi \prod_{i=1}^{n-1}\int_0^\infty r\,e^{-k_i(r - r_i)^2/2}\,dr
          \prod_{i=2}^{n-1}\int_{-\pi}^{\pi} e^{-\kappa_i(\cos\psi - \cos\theta_i)^2}\,d\psi,

one-dimensional integrals done by quadrature, and exact samples of the repulsion-free chain come from
inverse CDFs of those 1-D densities. Then :math:`Z = Z_0\,\mathbb{E}_{0}[e^{-E_\text{rep}}]`, estimated
with many exact samples (:meth:`BeadChain.reference_log_z`, with its standard error). Reference samples
(:meth:`BeadChain.reference_samples`) are parallel-tempering MALA runs started from exact samples of the
repulsion-free chain and cached like the other energies'.

Example:
    >>> chain = BeadChain("ABCA")
    >>> chain.dim, chain.types.tolist()
    (8, [0, 1, 2, 0])
    >>> x = chain.sample_bonded(5, generator=torch.Generator().manual_seed(0))
    >>> chain(x).shape
    torch.Size([5])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from flowforge.data.energies import Energy

__all__ = ["BeadChain", "ChainFamilyData", "ChainTypes", "DEFAULT_CHAIN_TYPES", "chain_family", "parse_types"]

_GRID = 8001  # quadrature / inverse-CDF grid points for the 1-D bond-length and angle densities


@dataclass(frozen=True)
class ChainTypes:
    r"""Per-type parameters of :class:`BeadChain` (one entry a type).

    Attributes:
        radius: :math:`\rho_t`; bond rest length :math:`r_{ab} = \rho_a + \rho_b`.
        bond_k: :math:`k_t`; bond stiffness :math:`k_{ab} = \sqrt{k_a k_b}`.
        angle: :math:`\theta_t` in radians, preferred turning angle at a bead of this type (two wells
            :math:`\pm\theta_t` when nonzero).
        angle_k: :math:`\kappa_t`, strength of the angle term.
        letters: one letter a type, for type strings such as ``"ABCA"``.
        repulsion: :math:`\varepsilon` of the soft repulsion.
        contact: :math:`\sigma_{ab} = c\,(\rho_a + \rho_b)`, the repulsion range factor ``c``.
    """

    radius: tuple[float, ...] = (0.5, 0.6, 0.45)
    bond_k: tuple[float, ...] = (40.0, 60.0, 30.0)
    angle: tuple[float, ...] = (0.0, math.pi / 3, math.pi / 2)
    angle_k: tuple[float, ...] = (4.0, 8.0, 5.0)
    letters: str = "ABC"
    repulsion: float = 5.0
    contact: float = 1.2

    def __post_init__(self) -> None:
        k = len(self.radius)
        if (
            k < 1
            or any(len(v) != k for v in (self.bond_k, self.angle, self.angle_k))
            or len(self.letters) != k
        ):
            raise ValueError(
                "ChainTypes needs one radius, bond_k, angle, angle_k and letter per type (equal lengths)"
            )
        if min(self.radius) <= 0 or min(self.bond_k) <= 0 or min(self.angle_k) < 0 or self.repulsion < 0:
            raise ValueError("radius and bond_k must be positive, angle_k and repulsion non-negative")

    @property
    def num_types(self) -> int:
        return len(self.radius)


DEFAULT_CHAIN_TYPES = ChainTypes()


def parse_types(types: str | Sequence[int] | Tensor, table: ChainTypes = DEFAULT_CHAIN_TYPES) -> Tensor:
    """A type sequence as a long tensor ``(n,)``: from letters (``"ABCA"``) or integers.

    Example:
        >>> parse_types("BAC").tolist(), parse_types([2, 0, 1]).tolist()
        ([1, 0, 2], [2, 0, 1])
    """
    if isinstance(types, str):
        bad = sorted(set(types) - set(table.letters))
        if bad:
            raise ValueError(
                f"unknown bead type letters {bad} in {types!r}; use letters from {table.letters!r}, e.g. 'ABCA'"
            )
        t = torch.tensor([table.letters.index(c) for c in types], dtype=torch.long)
    else:
        t = torch.as_tensor(types)
        if t.is_floating_point() or t.ndim != 1:
            raise ValueError(
                f"types must be a 1-D integer sequence or a letter string, got {t.dtype} {tuple(t.shape)}"
            )
        t = t.long()
    if t.numel() < 3:
        raise ValueError(f"a bead chain needs at least 3 beads (bonds and an angle), got {t.numel()}")
    if int(t.min()) < 0 or int(t.max()) >= table.num_types:
        raise ValueError(f"bead types must lie in [0, {table.num_types - 1}], got {t.tolist()}")
    return t


def _grid_density(log_f: Tensor, lo: float, hi: float) -> tuple[Tensor, Tensor, float]:
    """Grid ``(G,)``, CDF ``(G,)`` and ``log int f`` of an unnormalised 1-D density given as ``log f(grid)``."""
    grid = torch.linspace(lo, hi, _GRID, dtype=torch.float64)
    lf = log_f(grid)
    m = float(lf.max())
    f = torch.exp(lf - m)
    dx = (hi - lo) / (_GRID - 1)
    cells = 0.5 * (f[1:] + f[:-1]) * dx
    cdf = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(cells, 0)])
    total = float(cdf[-1])
    return grid, cdf / total, math.log(total) + m


def _inverse_cdf(grid: Tensor, cdf: Tensor, u: Tensor) -> Tensor:
    """Linear interpolation of the inverse CDF at uniforms ``u``."""
    i = torch.searchsorted(cdf, u).clamp(1, grid.numel() - 1)
    c0, c1 = cdf[i - 1], cdf[i]
    w = ((u - c0) / (c1 - c0).clamp(min=1e-300)).clamp(0, 1)
    return grid[i - 1] + w * (grid[i] - grid[i - 1])


class BeadChain(Energy):
    r"""A 2-D bead chain with type-dependent bonds, angles and soft repulsion (see the module docstring).

    Points are ``x: (B, 2n)`` (bead ``i`` at ``x.view(B, n, 2)[:, i]``); ``energy(x) -> (B,)`` in kT.

    Args:
        types: the type sequence, letters (``"ABCA"``) or integers, at least 3 beads.
        table: the per-type parameters.

    Example:
        >>> chain = BeadChain("ABA")
        >>> lz, se = chain.reference_log_z(20_000, seed=0)
        >>> se < 0.05
        True
    """

    def __init__(self, types: str | Sequence[int] | Tensor, table: ChainTypes = DEFAULT_CHAIN_TYPES) -> None:
        t = parse_types(types, table)
        super().__init__(2 * t.numel())
        self.table = table
        self.n = t.numel()
        self.register_buffer("types", t, persistent=False)
        rad = torch.tensor(table.radius, dtype=torch.float64)
        kb = torch.tensor(table.bond_k, dtype=torch.float64)
        a, b = t[:-1], t[1:]
        self.register_buffer("r0", rad[a] + rad[b], persistent=False)
        self.register_buffer("kb", torch.sqrt(kb[a] * kb[b]), persistent=False)
        mid = t[1:-1]
        self.register_buffer(
            "cos0", torch.cos(torch.tensor(table.angle, dtype=torch.float64))[mid], persistent=False
        )
        self.register_buffer("ka", torch.tensor(table.angle_k, dtype=torch.float64)[mid], persistent=False)
        i, j = torch.triu_indices(self.n, self.n, 2)
        self.register_buffer("pi", i, persistent=False)
        self.register_buffer("pj", j, persistent=False)
        self.register_buffer("sigma2", (table.contact * (rad[t[i]] + rad[t[j]])) ** 2, persistent=False)

    @property
    def letters(self) -> str:
        return "".join(self.table.letters[int(k)] for k in self.types)

    @property
    def params(self) -> dict[str, Any]:
        tb = self.table
        return {"types": self.letters, "radius": tb.radius, "bond_k": tb.bond_k, "angle": tb.angle,
                "angle_k": tb.angle_k, "repulsion": tb.repulsion, "contact": tb.contact}  # fmt: skip

    # -- energy ------------------------------------------------------------------------------------

    def _beads(self, x: Tensor) -> Tensor:
        self.check(x)
        return x.reshape(x.shape[0], self.n, 2)

    def bonded_energy(self, x: Tensor) -> Tensor:
        """Bonds + angles ``(B,)`` (no repulsion, no centre term)."""
        p = self._beads(x)
        bv = p[:, 1:] - p[:, :-1]
        r = torch.sqrt(bv.square().sum(-1).clamp(min=1e-12))
        e = (0.5 * self.kb.to(x.dtype) * (r - self.r0.to(x.dtype)).square()).sum(1)
        cos = (bv[:, 1:] * bv[:, :-1]).sum(-1) / (r[:, 1:] * r[:, :-1])
        return e + (self.ka.to(x.dtype) * (cos - self.cos0.to(x.dtype)).square()).sum(1)

    def repulsion_energy(self, x: Tensor) -> Tensor:
        r"""Soft repulsion :math:`\sum_{|i-j|\ge2}\varepsilon(1 - d^2/\sigma^2)_+^2`, ``(B,)``."""
        p = self._beads(x)
        if self.pi.numel() == 0:
            return x.new_zeros(x.shape[0])
        d2 = (p[:, self.pi] - p[:, self.pj]).square().sum(-1)
        return self.table.repulsion * torch.relu(1.0 - d2 / self.sigma2.to(x.dtype)).square().sum(1)

    def com_energy(self, x: Tensor) -> Tensor:
        r""":math:`\tfrac n2 \lVert\bar x\rVert^2`, ``(B,)``."""
        return 0.5 * self.n * self._beads(x).mean(1).square().sum(-1)

    def energy(self, x: Tensor) -> Tensor:
        return self.bonded_energy(x) + self.repulsion_energy(x) + self.com_energy(x)

    # -- exact repulsion-free chain and log Z ------------------------------------------------------

    def _bond_grids(self) -> list[tuple[Tensor, Tensor, float]]:
        out = []
        for r0, k in zip(self.r0.tolist(), self.kb.tolist(), strict=True):
            w = 12.0 / math.sqrt(k)
            lo, hi = max(1e-9, r0 - w), r0 + w
            out.append(_grid_density(lambda r, r0=r0, k=k: torch.log(r) - 0.5 * k * (r - r0) ** 2, lo, hi))
        return out

    def _angle_grids(self) -> list[tuple[Tensor, Tensor, float]]:
        return [
            _grid_density(lambda s, c0=c0, k=k: -k * (torch.cos(s) - c0) ** 2, -math.pi, math.pi)
            for c0, k in zip(self.cos0.tolist(), self.ka.tolist(), strict=True)
        ]

    def bonded_log_z(self) -> float:
        r""":math:`\log Z_0` of :math:`e^{-E_\text{bonded} - n\lVert\bar x\rVert^2/2}` on :math:`\mathbb{R}^{2n}` (quadrature)."""
        lz = math.log(2 * math.pi / self.n) + math.log(2 * math.pi)
        lz += sum(g[2] for g in self._bond_grids()) + sum(g[2] for g in self._angle_grids())
        return lz

    @torch.no_grad()
    def sample_bonded(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Exact samples ``(n, 2n_beads)`` (float64) of the chain without repulsion (inverse CDFs)."""
        if n < 1:
            raise ValueError(f"sample_bonded needs n >= 1, got {n}")
        kw = {"generator": generator, "dtype": torch.float64}
        r = torch.stack([_inverse_cdf(g, c, torch.rand(n, **kw)) for g, c, _ in self._bond_grids()], 1)
        turns = [_inverse_cdf(g, c, torch.rand(n, **kw)) for g, c, _ in self._angle_grids()]
        phi0 = 2 * math.pi * torch.rand(n, 1, **kw)
        psi = torch.stack(turns, 1) if turns else torch.zeros(n, 0, dtype=torch.float64)
        phi = torch.cat([phi0, phi0 + torch.cumsum(psi, 1)], 1)
        bonds = r[..., None] * torch.stack([torch.cos(phi), torch.sin(phi)], -1)
        p = torch.cat([torch.zeros(n, 1, 2, dtype=torch.float64), torch.cumsum(bonds, 1)], 1)
        centre = torch.randn(n, 1, 2, **kw) / math.sqrt(self.n)
        return (p - p.mean(1, keepdim=True) + centre).reshape(n, self.dim)

    @torch.no_grad()
    def reference_log_z(self, n: int = 1_000_000, seed: int = 0, batch: int = 200_000) -> tuple[float, float]:
        r"""``(log Z, standard error)``: :math:`\log Z_0 + \log \frac1N\sum e^{-E_\text{rep}(x_i)}` over exact
        repulsion-free samples :math:`x_i`; the error is the delta-method standard error of the mean."""
        g = torch.Generator().manual_seed(int(seed))
        ws = []
        for s in range(0, n, batch):
            ws.append(torch.exp(-self.repulsion_energy(self.sample_bonded(min(batch, n - s), generator=g))))
        w = torch.cat(ws)
        m = float(w.mean())
        return self.bonded_log_z() + math.log(m), float(w.std()) / math.sqrt(n) / m

    # -- reference samples -------------------------------------------------------------------------

    def reference_settings(self) -> dict[str, Any]:
        return {"chains": 256, "betas": [1.0, 0.6], "burn_in": 300, "thin": 10, "step_size": 0.01,
                "mala_steps": 1}  # fmt: skip

    def _reference_init(self, n: int, generator: torch.Generator) -> Tensor:
        return self.sample_bonded(n, generator=generator)


def chain_family(
    lengths: Sequence[int],
    per_length: int,
    seed: int = 0,
    exclude: Sequence[str] = (),
    table: ChainTypes = DEFAULT_CHAIN_TYPES,
) -> list[str]:
    """``per_length`` distinct random type strings for each length (seeded), none of them in ``exclude``.

    Example:
        >>> chain_family([4, 5], 2, seed=0)
        ['CACA', 'BABB', 'BACCA', 'ABCAA']
    """
    g = torch.Generator().manual_seed(int(seed))
    banned = set(exclude)
    out: list[str] = []
    for n in lengths:
        if n < 3:
            raise ValueError(f"chain lengths must be >= 3, got {n}")
        if per_length > table.num_types**n - len([e for e in banned if len(e) == n]):
            raise ValueError(
                f"cannot draw {per_length} distinct chains of length {n} from {table.num_types} types"
            )
        got: list[str] = []
        while len(got) < per_length:
            s = "".join(table.letters[int(k)] for k in torch.randint(table.num_types, (n,), generator=g))
            if s not in banned and s not in got:
                got.append(s)
        out += got
    return out


class ChainFamilyData:
    r"""Training batches for a transferable flow: ``data(batch_size, generator) -> (x, types)``.

    Each call picks one system at random (all samples of a batch share a length), draws ``batch_size`` of
    its samples and applies the target's symmetries: a random rotation and reflection about the origin
    and a fresh centre :math:`\bar x \sim N(0, I/n)` (the chain energy is invariant under all three).

    Args:
        samples: one ``(N_i, 2 n_i)`` tensor of samples a system.
        types: one ``(n_i,)`` type tensor a system.
        augment: apply the symmetries (rotation, reflection, centre).

    Example:
        >>> c = BeadChain("ABCA")
        >>> data = ChainFamilyData([c.sample_bonded(10)], [c.types])
        >>> x, t = data(4, torch.Generator().manual_seed(0))
        >>> x.shape, t[0].tolist()
        (torch.Size([4, 8]), [0, 1, 2, 0])
    """

    def __init__(self, samples: Sequence[Tensor], types: Sequence[Tensor], augment: bool = True) -> None:
        if len(samples) != len(types) or not samples:
            raise ValueError(f"give one sample tensor a type sequence, got {len(samples)} and {len(types)}")
        for x, t in zip(samples, types, strict=True):
            if x.ndim != 2 or x.shape[1] != 2 * t.numel() or x.shape[0] < 1:
                raise ValueError(
                    f"samples of a {t.numel()}-bead chain must have shape (N, {2 * t.numel()}), got {tuple(x.shape)}"
                )
        self.samples = [x.float() for x in samples]
        self.types = [torch.as_tensor(t).long() for t in types]
        self.augment = augment

    def __call__(self, batch_size: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        k = int(torch.randint(len(self.samples), (1,), generator=generator))
        xs, t = self.samples[k], self.types[k]
        x = xs[torch.randint(xs.shape[0], (batch_size,), generator=generator)]
        if self.augment:
            n = t.numel()
            p = x.reshape(batch_size, n, 2)
            p = p - p.mean(1, keepdim=True)
            a = 2 * math.pi * torch.rand(batch_size, generator=generator)
            c, s = torch.cos(a), torch.sin(a)
            rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)  # (B, 2, 2)
            flip = torch.where(torch.rand(batch_size, generator=generator) < 0.5, -1.0, 1.0)
            p = p * torch.stack([flip, torch.ones_like(flip)], -1)[:, None]
            p = p @ rot.transpose(1, 2)
            p = p + torch.randn(batch_size, 1, 2, generator=generator) / math.sqrt(n)
            x = p.reshape(batch_size, -1)
        return x, t.expand(batch_size, -1)
