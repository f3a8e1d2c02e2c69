"""Alanine dipeptide end to end: MD reference -> maximum-likelihood flow -> importance sampling (SNIS).

Pipeline
    1. Reference data: our own OpenMM Langevin MD at 300 K (``AlanineDipeptide.md_samples``: vacuum, NoCutoff,
       no constraints, LangevinMiddle 1 fs, friction 1/ps, one frame per 100 fs), a training trajectory
       (seed 0) and an independent test trajectory (seed 1), both cached in ``benchmarks/.cache/reference``.
    2. Coordinates (``--coords``), standardised per dimension with training statistics:
       ``cartesian`` (default; the baseline this benchmark is about): CoM-free Cartesian. The target
       ``exp(-E)`` is translation invariant, so centred coordinates live on a 63-dim subspace of R^66; we
       map them isometrically to R^63 with the Helmert basis (``com_free_basis``: ``Y = Hᵀ X``, ``X = H Y``)
       and model those 63 numbers. Because the map is an isometry, the flow's ``log q`` (plus the
       standardisation's constant ``-Σ log s``) is the density on the CoM-free subspace: no CoM correction
       term is needed (Prose instead models all 66 and adds an analytic CoM adjustment). Rotations are
       not removed, so the flow has to learn every orientation of the freely tumbling molecule.
       ``frame``: Cartesian coordinates in a body frame on (CA, N, C): translation *and* rotation removed
       exactly, 60 numbers, with the Jacobian ``d³ c2²`` of the change of variables (see FrameProposal).
       ``internal``: the same frame plus bond / angle / torsion coordinates for the other 19 atoms
       (a FAB-style mixed Z-matrix), Jacobian ``Π b² sin θ`` (see InternalProposal).
    3. Flow: flowforge ``RealNVP`` (8 affine couplings, MLP 128x128; ``--flow nsf`` for spline couplings,
       ~4x slower per step here) trained by maximum likelihood with ``flowforge.train.train`` (AdamW, cosine
       LR, EMA 0.999), 4000 steps x 256. Weights cached in ``benchmarks/.cache``.
    4. Importance sampling with the OpenMM energy (``flowforge.normalizing.importance_sample``):
       ``log w = -E(x)/kT - log q(x)``; Kish ESS / N, with and without Prose's 0.2 % top-weight filter.
    5. Metrics against the test trajectory: mean / median energy, energy-W2 (``sqrt(emd2_1d)``, weighted
       for the reweighted flow), Ramachandran basin fractions (C7eq/C5, αR, φ > 0) and the total-variation
       distance of 36x36 (φ, ψ) histograms; MD-train vs MD-test is the noise floor. Throughput: energy
       evaluations/s (energy only, and energy + forces) and MD steps/s.

Run:   python benchmarks/aldp_is.py [--coords cartesian|frame|internal]
                                        (first time ~3 min MD + ~4-6 min training; then ~1 min from cache)
       python benchmarks/aldp_is.py --quick         (smoke run, short MD and training; not cached)
Needs: pip install openmm pot  (flowforge[aldp], POT for emd2_1d); data in ../shared/data/alanine_dipeptide.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from flowforge.data.aldp import AlanineDipeptide, com_free_basis
from flowforge.normalizing import NSF, Flow, RealNVP, importance_sample
from flowforge.train import load_safetensors, save_safetensors, train

ROOT = Path(__file__).resolve().parent
CACHE = ROOT / ".cache"
DEFAULT_DATA = ROOT.parents[1] / "shared" / "data" / "alanine_dipeptide"


class CoMFreeProposal:
    """A flow on standardised Helmert coordinates ``u (B, 63)`` seen as a density on centred ``x (B, 66)``.

    ``y = mean + std * u`` (63 CoM-free coordinates, nm), ``X = H Y`` (atoms as rows);
    ``log q(x) = log q_u(u) - Σ log std`` (the Helmert map is an isometry of the centred subspace).
    """

    def __init__(self, flow: Flow, mean: Tensor, std: Tensor, n_atoms: int = 22) -> None:
        self.flow, self.mean, self.std, self.n_atoms = flow, mean, std, n_atoms
        self.h = com_free_basis(n_atoms, dtype=torch.float32)
        self.log_det = float(std.log().sum())

    def to_u(self, x: Tensor) -> Tensor:
        y = (self.h.T @ x.reshape(-1, self.n_atoms, 3)).reshape(len(x), -1)
        return (y - self.mean) / self.std

    def to_x(self, u: Tensor) -> Tensor:
        y = self.mean + self.std * u
        return (self.h @ y.reshape(len(u), self.n_atoms - 1, 3)).reshape(len(u), -1)

    def sample_and_log_prob(
        self, n: int, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        u, lq = self.flow.sample_and_log_prob(n, generator=generator)
        return self.to_x(u), lq - self.log_det

    def log_prob(self, x: Tensor) -> Tensor:
        return self.flow.log_prob(self.to_u(x)) - self.log_det


class FrameProposal:
    """A flow on 60 body-frame coordinates ``s`` seen as a density on configurations modulo rigid motions.

    Frame from three atoms ``(a, b, c)`` (default CA, N, C): origin ``r_a``, ``e1 = (r_b - r_a)/d``, ``e2`` the
    unit part of ``r_c - r_a`` orthogonal to ``e1``, ``e3 = e1 × e2``. Free coordinates: ``log d``,
    ``c1 = (r_c - r_a)·e1``, ``log c2`` with ``c2 = (r_c - r_a)·e2 > 0``, and the 19 other atoms in the frame
    (57). Volume element: ``dx = d² c2 dd dc1 dc2 · dΩ dψ · dt · Π dr_i`` (spherical coordinates for ``r_b``,
    cylindrical ones about ``e1`` for ``r_c``), so with the log-parameters the target on ``s`` is
    ``exp(-E(x(s))) d³ c2²``: the proposal's effective ``log q`` is ``log q_s(s) - 3 log d - 2 log c2``.
    Orientation and position are exactly uniform (they integrate out), so no rotation has to be learned.
    """

    def __init__(
        self, flow: Flow, mean: Tensor, std: Tensor, frame: tuple[int, int, int] = (8, 6, 14)
    ) -> None:
        self.flow, self.mean, self.std, self.frame = flow, mean, std, frame
        self.others = [i for i in range(22) if i not in frame]
        self.log_det = float(std.log().sum())

    def raw(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Unstandardised ``s: (B, 60)`` and the log-Jacobian term ``3 log d + 2 log c2``."""
        a, b, c = self.frame
        r = x.reshape(len(x), 22, 3)
        r = r - r[:, a : a + 1]
        d = r[:, b].norm(dim=-1)
        e1 = r[:, b] / d[:, None]
        c1 = (r[:, c] * e1).sum(-1)
        v = r[:, c] - c1[:, None] * e1
        c2 = v.norm(dim=-1)
        e2 = v / c2[:, None]
        rot = torch.stack([e1, e2, torch.linalg.cross(e1, e2)], dim=-1)  # columns e1 e2 e3
        local = (r[:, self.others] @ rot).reshape(len(x), -1)
        s = torch.cat([d.log()[:, None], c1[:, None], c2.log()[:, None], local], dim=1)
        return s, 3 * d.log() + 2 * c2.log()

    def to_x(self, s: Tensor) -> tuple[Tensor, Tensor]:
        """Centred ``x: (B, 66)`` in the canonical orientation and ``3 log d + 2 log c2``."""
        a, b, c = self.frame
        n = len(s)
        r = s.new_zeros(n, 22, 3)
        d, c1, c2 = s[:, 0].exp(), s[:, 1], s[:, 2].exp()
        r[:, b, 0] = d
        r[:, c, 0], r[:, c, 1] = c1, c2
        r[:, self.others] = s[:, 3:].reshape(n, -1, 3)
        r = r - r.mean(1, keepdim=True)
        return r.reshape(n, -1), 3 * s[:, 0] + 2 * s[:, 2]

    def to_u(self, x: Tensor) -> Tensor:
        return (self.raw(x)[0] - self.mean) / self.std

    def sample_and_log_prob(
        self, n: int, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        u, lq = self.flow.sample_and_log_prob(n, generator=generator)
        x, jac = self.to_x(self.mean + self.std * u)
        return x, lq - self.log_det - jac

    def log_prob(self, x: Tensor) -> Tensor:
        s, jac = self.raw(x)
        return self.flow.log_prob((s - self.mean) / self.std) - self.log_det - jac


# Z-matrix for the 19 atoms outside the (CA, N, C) frame: atom -> (bond partner, angle partner, torsion
# partner), every partner placed before. φ is the torsion of C(ACE)=4 and ψ that of N(NME)=16.
ZMATRIX: tuple[tuple[int, int, int, int], ...] = (
    (9, 8, 6, 14),  # HA
    (10, 8, 6, 14),  # CB
    (7, 6, 8, 14),  # H (ALA)
    (4, 6, 8, 14),  # C (ACE): torsion = φ
    (5, 4, 6, 8),  # O (ACE)
    (1, 4, 6, 8),  # CH3 (ACE): torsion = ω
    (0, 1, 4, 6),  # ACE methyl H (rotor)
    (2, 1, 4, 0),
    (3, 1, 4, 0),
    (16, 14, 8, 6),  # N (NME): torsion = ψ
    (15, 14, 8, 16),  # O (ALA)
    (17, 16, 14, 8),  # H (NME)
    (18, 16, 14, 8),  # CH3 (NME): torsion = ω'
    (19, 18, 16, 14),  # NME methyl H (rotor)
    (20, 18, 16, 19),
    (21, 18, 16, 19),
    (11, 10, 8, 6),  # CB methyl H (rotor)
    (12, 10, 8, 11),
    (13, 10, 8, 11),
)


def _angle(r: Tensor, i: int, j: int, k: int) -> Tensor:
    u, v = r[:, i] - r[:, j], r[:, k] - r[:, j]
    return torch.atan2(torch.linalg.cross(u, v).norm(dim=-1), (u * v).sum(-1))


class InternalProposal:
    """A flow on 60 internal coordinates (FAB-style mixed frame + Z-matrix) as a density on conformations.

    The (CA, N, C) frame gives ``log d, c1, log c2`` (as :class:`FrameProposal`); every other atom ``i`` is
    placed from its Z-matrix partners ``(j, k, l)`` by bond length ``b = |r_i - r_j|``, angle ``θ = ∠ijk``
    and torsion ``τ = dihedral(i, j, k, l)`` (NeRF). Volume element ``dx_i = b² sin θ db dθ dτ``, so the
    proposal's effective ``log q`` is ``log q_s(s) - 3 log d - 2 log c2 - Σ (2 log b + log sin θ)``.
    Torsions are shifted by their circular mean, wrapped into ``[-π, π)`` and unbounded with
    ``v = atanh(τ/π)`` (log-Jacobian ``log(π sech² v)`` per torsion), so every flow sample is a valid torsion
    (a plain shifted torsion put 18 % of the samples outside ``[-π, π)``, mostly the three methyl rotors
    whose torsions cover the whole circle). A sample with ``θ ∉ (0, π)`` or a negative bond lies outside
    the chart and gets zero weight (``log q = +inf``), which keeps the estimator exact.
    """

    def __init__(self, flow: Flow, mean: Tensor, std: Tensor, shift: Tensor) -> None:
        self.flow, self.mean, self.std, self.shift = flow, mean, std, shift
        self.frame = FrameProposal(flow, mean, std)
        self.log_det = float(std.log().sum())
        self.tors = torch.arange(3 + 2 * len(ZMATRIX), 3 + 3 * len(ZMATRIX))  # torsion columns

    @staticmethod
    def raw(x: Tensor) -> tuple[Tensor, Tensor]:
        """``s = (log d, c1, log c2, bonds (19), angles (19), torsions (19))`` unshifted, and the log-Jacobian."""
        from flowforge.data.aldp import dihedral

        s3, jac = _FRAME.raw(x)
        r = x.reshape(len(x), 22, 3)
        bonds = torch.stack([(r[:, i] - r[:, j]).norm(dim=-1) for i, j, _, _ in ZMATRIX], 1)
        angles = torch.stack([_angle(r, i, j, k) for i, j, k, _ in ZMATRIX], 1)
        tors = torch.stack([dihedral(x, (i, j, k, l)) for i, j, k, l in ZMATRIX], 1)
        jac = jac + (2 * bonds.log() + angles.sin().log()).sum(1)
        return torch.cat([s3[:, :3], bonds, angles, tors], 1), jac

    def to_x(self, s: Tensor) -> tuple[Tensor, Tensor]:
        """Centred ``x: (B, 66)`` from unshifted internal coordinates, and the log-Jacobian."""
        n, m = len(s), len(ZMATRIX)
        r = s.new_zeros(n, 22, 3)
        a, b, c = _FRAME.frame
        d, c1, c2 = s[:, 0].exp(), s[:, 1], s[:, 2].exp()
        r[:, b, 0] = d
        r[:, c, 0], r[:, c, 1] = c1, c2
        bonds, angles, tors = s[:, 3 : 3 + m], s[:, 3 + m : 3 + 2 * m], s[:, 3 + 2 * m :]
        for q, (i, j, k, l) in enumerate(ZMATRIX):
            bc = r[:, j] - r[:, k]
            bc = bc / bc.norm(dim=-1, keepdim=True)
            nv = torch.linalg.cross(r[:, k] - r[:, l], bc)
            nv = nv / nv.norm(dim=-1, keepdim=True)
            mv = torch.linalg.cross(nv, bc)
            bq, th, tq = bonds[:, q : q + 1], angles[:, q : q + 1], tors[:, q : q + 1]
            r[:, i] = r[:, j] - bq * th.cos() * bc + bq * th.sin() * (tq.cos() * mv + tq.sin() * nv)
        jac = 3 * s[:, 0] + 2 * s[:, 2] + (2 * bonds.log() + angles.sin().log()).sum(1)
        r = r - r.mean(1, keepdim=True)
        return r.reshape(n, -1), jac

    def chart(self, s: Tensor) -> tuple[Tensor, Tensor]:
        """Raw internal ``s`` -> chart ``c`` (torsions shifted, wrapped, ``v = atanh(τ/π)``), ``log|dc/ds|``."""
        c = s.clone()
        t = torch.remainder(s[:, self.tors] - self.shift + math.pi, 2 * math.pi) - math.pi
        v = torch.atanh((t / math.pi).clamp(-1 + 1e-6, 1 - 1e-6))
        c[:, self.tors] = v
        return c, -_log_pi_sech2(v).sum(1)

    def unchart(self, c: Tensor) -> tuple[Tensor, Tensor]:
        """Chart ``c`` -> raw internal ``s`` (torsions ``π tanh(v)`` + shift) and ``log|ds/dc|``."""
        s = c.clone()
        v = c[:, self.tors]
        s[:, self.tors] = math.pi * torch.tanh(v) + self.shift
        return s, _log_pi_sech2(v).sum(1)

    def to_u(self, x: Tensor) -> Tensor:
        return (self.chart(self.raw(x)[0])[0] - self.mean) / self.std

    def sample_and_log_prob(
        self, n: int, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        u, lq = self.flow.sample_and_log_prob(n, generator=generator)
        s, ldj = self.unchart(self.mean + self.std * u)
        m = len(ZMATRIX)
        angles = s[:, 3 + m : 3 + 2 * m]
        ok = (angles > 0).all(1) & (angles < math.pi).all(1) & (s[:, 3 : 3 + m] > 0).all(1)
        x, jac = self.to_x(s)
        lq = lq - self.log_det - ldj - jac
        return x, torch.where(ok, lq, torch.full_like(lq, math.inf))

    def log_prob(self, x: Tensor) -> Tensor:
        s, jac = self.raw(x)
        c, ldc = self.chart(s)
        return self.flow.log_prob((c - self.mean) / self.std) - self.log_det + ldc - jac


def _log_pi_sech2(v: Tensor) -> Tensor:
    """``log(π sech² v) = log π + 2 (log 2 - |v| - log1p(exp(-2|v|)))``, elementwise and stable."""
    a = v.abs()
    return math.log(math.pi) + 2 * (math.log(2.0) - a - torch.log1p(torch.exp(-2 * a)))


_FRAME = FrameProposal(None, torch.zeros(60), torch.ones(60))  # type: ignore[arg-type]  (geometry only)


# ------------------------------------------------------------------------------------------------ metrics

BASINS = ("C7eq/C5 (β)", "αR", "φ>0 (C7ax/αL)")


def basin_fractions(ang_deg: Tensor, w: Tensor | None = None) -> list[float]:
    """Weighted fractions in the three Ramachandran regions: φ<0 & ψ outside [-125, 50]; φ<0 & ψ in it; φ>0."""
    phi, psi = ang_deg[:, 0], ang_deg[:, 1]
    w = (
        torch.full_like(phi, 1.0 / len(phi), dtype=torch.float64)
        if w is None
        else w.double() / w.double().sum()
    )
    alpha = (phi < 0) & (psi >= -125) & (psi <= 50)
    beta = (phi < 0) & ~alpha
    return [float(w[m].sum()) for m in (beta, alpha, phi >= 0)]


def weighted_median(e: Tensor, w: Tensor | None = None) -> float:
    """Median of ``e`` under weights ``w`` (uniform when ``None``)."""
    if w is None:
        return float(e.median())
    order = e.argsort()
    cdf = torch.cumsum((w.double() / w.double().sum())[order], 0)
    k = int(torch.searchsorted(cdf, torch.tensor(0.5, dtype=torch.float64)).clamp(max=len(e) - 1))
    return float(e[order[k]])


def rama_tv(
    a: Tensor, b: Tensor, wa: Tensor | None = None, wb: Tensor | None = None, bins: int = 36
) -> float:
    """Total variation between (φ, ψ) histograms on a ``bins x bins`` grid over [-180, 180)²."""

    def hist(ang: Tensor, w: Tensor | None) -> np.ndarray:
        h, _, _ = np.histogram2d(
            ang[:, 0].numpy(),
            ang[:, 1].numpy(),
            bins=bins,
            range=[[-180, 180], [-180, 180]],
            weights=None if w is None else w.double().numpy(),
        )
        return h / h.sum()

    return 0.5 * float(np.abs(hist(a, wa) - hist(b, wb)).sum())


def energy_w2(e_ref: Tensor, e: Tensor, w: Tensor | None = None) -> float:
    """``sqrt(emd2_1d)`` between energy distributions (squared-Euclidean ground cost), ``w`` weights of ``e``."""
    import ot

    a = np.full(len(e_ref), 1.0 / len(e_ref))
    b = np.full(len(e), 1.0 / len(e)) if w is None else (w.double() / w.double().sum()).numpy()
    return math.sqrt(
        float(ot.emd2_1d(e_ref.double().numpy(), e.double().numpy(), a, b, metric="sqeuclidean"))
    )


def evals_per_second(aldp: AlanineDipeptide, x: Tensor, grad: bool) -> float:
    t0 = time.perf_counter()
    if grad:
        xg = x.clone().requires_grad_(True)
        aldp.energy(xg).sum().backward()
    else:
        aldp.energy(x)
    return len(x) / (time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------------ main


def build_flow(kind: str, dim: int, transforms: int, hidden: tuple[int, ...]) -> Flow:
    if kind == "nsf":
        return NSF(dim, transforms=transforms, hidden=hidden, bins=8, bound=5.0, coupling=True)
    if kind == "realnvp":
        return RealNVP(dim, transforms=transforms, hidden=hidden)
    raise ValueError(f"--flow must be 'nsf' or 'realnvp', got {kind!r}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="directory with alanine-dipeptide.prmtop/.crd")
    p.add_argument("--n-train", type=int, default=50_000)
    p.add_argument("--n-test", type=int, default=20_000)
    p.add_argument("--stride", type=int, default=100, help="MD steps (fs) between frames")
    p.add_argument("--coords", default="cartesian", choices=["cartesian", "frame", "internal"])
    p.add_argument("--flow", default="realnvp", choices=["nsf", "realnvp"])
    p.add_argument("--transforms", type=int, default=8)
    p.add_argument("--hidden", type=int, nargs="+", default=[128, 128])
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--n-is", type=int, default=50_000, help="flow proposals for importance sampling")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--retrain", action="store_true")
    p.add_argument(
        "--quick", action="store_true", help="smoke run: tiny MD, 200 steps, 2k proposals, no cache"
    )
    args = p.parse_args()
    if args.quick:
        args.n_train, args.n_test, args.stride, args.steps, args.n_is = 2000, 1000, 20, 200, 2000
    torch.set_num_threads(args.threads)
    hidden = tuple(args.hidden)
    cache_ref = CACHE / "reference" if not args.quick else Path("/tmp") / "flowforge-aldp-quick"

    aldp = AlanineDipeptide(args.data)
    print(
        f"# alanine dipeptide IS benchmark  (torch {torch.__version__}, {platform.machine()}, threads {args.threads})"
    )

    # 1. MD reference
    t0 = time.perf_counter()
    x_train = aldp.md_samples(args.n_train, seed=0, cache_dir=cache_ref, stride=args.stride)
    x_test = aldp.md_samples(args.n_test, seed=1, cache_dir=cache_ref, stride=args.stride)
    md_secs = time.perf_counter() - t0
    md_info = [json.loads(f.read_text()) for f in sorted(cache_ref.glob("aldp-md-*.json"))]
    md_rates = {
        (i["seed"], i["n"]): i["n"] * i["stride_steps"] / max(i["seconds"], 1e-9)
        for i in md_info
        if i["stride_steps"] == args.stride
    }
    print(
        f"MD frames: train {len(x_train)} (seed 0), test {len(x_test)} (seed 1); load/generate {md_secs:.1f} s"
    )
    for (s, n), r in sorted(md_rates.items()):
        print(f"  MD run seed {s} n {n}: {r:,.0f} steps/s when generated")

    # 2. coordinates, standardised with training statistics
    if args.coords == "cartesian":  # CoM-free Helmert coordinates (63)
        h = com_free_basis(22, dtype=torch.float32)
        y_train = (h.T @ x_train.reshape(-1, 22, 3)).reshape(len(x_train), -1)
        mean, std = y_train.mean(0), y_train.std(0)
        flow = build_flow(args.flow, 63, args.transforms, hidden)
        prop: CoMFreeProposal | FrameProposal | InternalProposal = CoMFreeProposal(flow, mean, std)
    elif args.coords == "internal":  # frame + Z-matrix internal coordinates (60)
        s_train = InternalProposal.raw(x_train)[0]
        tcols = torch.arange(3 + 2 * len(ZMATRIX), 3 + 3 * len(ZMATRIX))
        shift = torch.atan2(
            s_train[:, tcols].sin().mean(0), s_train[:, tcols].cos().mean(0)
        )  # circular means
        tmp = InternalProposal(None, torch.zeros(60), torch.ones(60), shift)  # type: ignore[arg-type]
        s_train = tmp.chart(s_train)[0]
        mean, std = s_train.mean(0), s_train.std(0)
        flow = build_flow(args.flow, 60, args.transforms, hidden)
        prop = InternalProposal(flow, mean, std, shift)
    else:  # body-frame Cartesian (60)
        s_train = FrameProposal(None, torch.zeros(60), torch.ones(60)).raw(x_train)[0]  # type: ignore[arg-type]
        mean, std = s_train.mean(0), s_train.std(0)
        flow = build_flow(args.flow, 60, args.transforms, hidden)
        prop = FrameProposal(flow, mean, std)
    u_train = prop.to_u(x_train)
    print(f"coordinates: {args.coords} ({u_train.shape[1]} modelled dimensions)")

    # 3. maximum likelihood (cached)
    tag = f"aldp-{args.coords}-{args.flow}{args.transforms}x{'-'.join(map(str, hidden))}-n{args.n_train}-s{args.stride}-steps{args.steps}-b{args.batch}-lr{args.lr:g}-seed{args.seed}"
    wpath, ipath = CACHE / f"{tag}.safetensors", CACHE / f"{tag}.json"
    if not args.quick and not args.retrain and wpath.is_file() and ipath.is_file():
        flow.load_state_dict(load_safetensors(wpath))
        info = json.loads(ipath.read_text()) | {"cached": True}
    else:
        t0 = time.perf_counter()
        run = train(
            flow, u_train, steps=args.steps, batch_size=args.batch, lr=args.lr, seed=args.seed, progress=False
        )
        secs = time.perf_counter() - t0
        run.load_into(flow, ema=True)
        info = {
            "train_seconds": round(secs, 1),
            "ms_per_step": round(1e3 * secs / args.steps, 2),
            "final_loss": run.metrics()[-1]["loss"],
            "params": sum(q.numel() for q in flow.parameters()),
        }
        if not args.quick:
            CACHE.mkdir(parents=True, exist_ok=True)
            save_safetensors(wpath, {k: v.contiguous() for k, v in flow.state_dict().items()})
            ipath.write_text(json.dumps(info, indent=2))
        info["cached"] = False
    flow.eval()
    with torch.no_grad():
        nll_test = float(-torch.cat([prop.log_prob(b) for b in x_test.split(4096)]).mean())
        nll_train = float(-torch.cat([prop.log_prob(b) for b in x_train[: len(x_test)].split(4096)]).mean())
    print(
        f"flow: {args.flow.upper()} {args.transforms} transforms, hidden {hidden}, {info['params']:,} params; "
        f"{args.steps} steps x {args.batch} in {info['train_seconds']} s ({info['ms_per_step']} ms/step)"
        f"{' [cached weights]' if info['cached'] else ''}"
    )
    print(
        f"NLL (nats/molecule; reference measure differs between --coords): train {nll_train:.2f}, test {nll_test:.2f}"
    )

    # 4. importance sampling with the OpenMM energy
    gen = torch.Generator().manual_seed(args.seed + 123)
    t0 = time.perf_counter()
    out = importance_sample(prop, aldp.energy, args.n_is, generator=gen, batch_size=5000)
    is_secs = time.perf_counter() - t0
    out_f = importance_sample(
        prop,
        aldp.energy,
        args.n_is,
        generator=torch.Generator().manual_seed(args.seed + 123),
        batch_size=5000,
        quantile_filter=0.002,
    )
    x_flow, e_flow, w = out.samples, out.energy, out.weights()
    lw = out.log_weights
    top = torch.topk(w, 5).values
    print(
        f"\nIS: {args.n_is} proposals in {is_secs:.1f} s (flow sampling + energies); non-finite weights: {out.n_nonfinite}"
    )
    print(
        f"Kish ESS/N = {out.ess:.3e}  (ESS = {out.ess * args.n_is:.1f} samples); with 0.2% top-weight filter: {out_f.ess:.3e}"
    )
    print(f"largest normalised weights: {', '.join(f'{v:.3f}' for v in top.tolist())}")
    print(
        f"log Z estimate (reference measure differs between --coords): {out.log_z:.2f}; "
        f"std of finite log w: {float(lw[torch.isfinite(lw)].std()):.1f}"
    )

    # throughput
    xe = x_test[:5000].double()
    eps = evals_per_second(aldp, xe, grad=False)
    eps_g = evals_per_second(aldp, xe, grad=True)
    print(
        f"OpenMM ({aldp.platform}) energy evaluations/s: {eps:,.0f} energy only, {eps_g:,.0f} with forces (backward)"
    )

    # 5. metrics
    e_test = aldp.energy(x_test.double())
    e_train = aldp.energy(x_train[: len(x_test)].double())
    ang_test = torch.rad2deg(aldp.phi_psi(x_test.double()))
    ang_train = torch.rad2deg(aldp.phi_psi(x_train[: len(x_test)].double()))
    ang_flow = torch.rad2deg(aldp.phi_psi(x_flow.double()))
    e_flow = e_flow.double()
    e_flow_rw = float((w * e_flow).sum())
    rows = [
        ("MD train (seed 0, same n)", e_train, None, ang_train),
        ("flow, unweighted", e_flow, None, ang_flow),
        ("flow, reweighted (SNIS)", e_flow, w, ang_flow),
    ]
    print(
        "\n| samples | mean E (kT) | median E (kT) | E-W2 to MD test (kT) | "
        + " | ".join(BASINS)
        + " | Rama TV to MD test |"
    )
    print("|---|---|---|---|" + "---|" * len(BASINS) + "---|")
    b = basin_fractions(ang_test)
    print(
        f"| MD test (seed 1) | {e_test.mean():.2f} | {e_test.median():.2f} | 0 | "
        + " | ".join(f"{v:.3f}" for v in b)
        + " | 0 |"
    )
    for name, e, ww, ang in rows:
        mean_e = float((ww / ww.sum() * e).sum()) if ww is not None else float(e.mean())
        med = weighted_median(e, ww)
        print(
            f"| {name} | {mean_e:.2f} | {med:.2f} | {energy_w2(e_test, e, ww):.2f} | "
            + " | ".join(f"{v:.3f}" for v in basin_fractions(ang, ww))
            + f" | {rama_tv(ang_test, ang, None, ww):.3f} |"
        )
    finite = torch.isfinite(e_flow) & (e_flow < 1e6)
    print(
        f"\nflow samples with E > max MD-test E ({e_test.max():.1f} kT): {float((e_flow > e_test.max()).double().mean()):.3f}; "
        f"E > 1e6 kT (clashes / stretched bonds): {float((~finite).double().mean()):.4f}; reweighted mean E {e_flow_rw:.2f}"
    )


if __name__ == "__main__":
    main()
