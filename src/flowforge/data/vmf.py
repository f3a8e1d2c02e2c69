r"""Von Mises-Fisher distributions on the sphere and their mixtures: exact samples and exact densities.

The vMF law on :math:`S^{p-1} \subset \mathbb R^p` with mean direction :math:`\mu` and concentration
:math:`\kappa > 0` has density w.r.t. the surface measure

.. math:: f(x) = C_p(\kappa)\, e^{\kappa \mu^\top x},\qquad
    C_p(\kappa) = \frac{\kappa^{p/2 - 1}}{(2\pi)^{p/2} I_{p/2-1}(\kappa)},\qquad
    C_3(\kappa) = \frac{\kappa}{4\pi\sinh\kappa}.

:func:`vmf_sample` draws exactly by Wood's rejection sampler (Wood, "Simulation of the von Mises Fisher
distribution", *Commun. Stat. Simul. Comput.* 23, 1994): the cosine :math:`W = \mu^\top x` from its
marginal by rejection from a Beta proposal, a uniform direction orthogonal to :math:`\mu`, and a
Householder reflection taking the north pole to :math:`\mu`. :class:`VMFMixture` is a weighted mixture;
:func:`earth_like_vmf_mixture` is a fixed 6-cluster mixture on the globe (seismic-belt-like clusters of
very different concentrations), the data of the ``sphere-vmf`` recipe, with its exact log-density as the
floor of any model's test NLL.

Example:
    >>> import torch
    >>> mix = earth_like_vmf_mixture()
    >>> x = mix.sample(1000, generator=torch.Generator().manual_seed(0))
    >>> x.shape, bool(((x.norm(dim=1) - 1).abs() < 1e-6).all()), mix.log_prob(x).shape
    (torch.Size([1000, 3]), True, torch.Size([1000]))
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "VMFMixture",
    "earth_like_vmf_mixture",
    "latlon_to_xyz",
    "vmf_log_normalizer",
    "vmf_log_prob",
    "vmf_sample",
]


def _check_mu_kappa(mu: Tensor, kappa: float) -> Tensor:
    mu = torch.as_tensor(mu, dtype=torch.float64)
    if mu.dim() != 1 or mu.numel() < 2:
        raise ValueError(f"mu must be one unit vector of shape (p,), p >= 2, got shape {tuple(mu.shape)}")
    if abs(float(mu.norm()) - 1.0) > 1e-6:
        raise ValueError(f"mu must be a unit vector, got |mu| = {float(mu.norm()):.6g}; pass mu / mu.norm()")
    if not (math.isfinite(float(kappa)) and float(kappa) > 0):
        raise ValueError(f"kappa must be a positive finite concentration, got {kappa!r}")
    return mu


def vmf_log_normalizer(kappa: float | Tensor, p: int) -> Tensor:
    r""":math:`\log C_p(\kappa)` (closed form for ``p = 3``; other ``p`` use SciPy's scaled Bessel ``ive``).

    Example:
        >>> round(float(vmf_log_normalizer(1e-9, 3)), 6) == round(-math.log(4 * math.pi), 6)  # ~uniform
        True
    """
    k = torch.as_tensor(kappa, dtype=torch.float64)
    if p == 3:  # log(kappa / (4 pi sinh kappa)) = log kappa - log 2 pi - kappa - log1p(-exp(-2 kappa))
        return torch.log(k) - math.log(2 * math.pi) - k - torch.log1p(-torch.exp(-2 * k))
    try:
        from scipy.special import ive
    except ImportError as e:  # pragma: no cover - scipy present in the dev environment
        raise ImportError("vMF normalisers for p != 3 need SciPy: pip install scipy") from e
    nu = p / 2 - 1
    log_i = torch.log(torch.as_tensor(ive(nu, k.numpy()), dtype=torch.float64)) + k
    return nu * torch.log(k) - (p / 2) * math.log(2 * math.pi) - log_i


def vmf_log_prob(x: Tensor, mu: Tensor, kappa: float) -> Tensor:
    r""":math:`\log C_p(\kappa) + \kappa\mu^\top x` (w.r.t. the surface measure), ``(B, p) -> (B,)``.

    Example:
        >>> import torch
        >>> mu = torch.tensor([0.0, 0.0, 1.0])
        >>> round(float(vmf_log_prob(mu[None], mu, 10.0)[0]), 4)  # log(10 / (4 pi sinh 10)) + 10
        0.4647
    """
    mu = _check_mu_kappa(mu, kappa)
    if x.dim() != 2 or x.shape[1] != mu.numel():
        raise ValueError(f"x must have shape (B, {mu.numel()}), got {tuple(x.shape)}")
    dot = x.to(torch.float64) @ mu.to(x.device)
    return (vmf_log_normalizer(kappa, mu.numel()) + float(kappa) * dot).to(x.dtype)


def _beta_half(k: int, n: int, generator: torch.Generator | None) -> Tensor:
    """``n`` draws of Beta(k/2, k/2) as chi2_k / (chi2_k + chi2_k), from 2k normals each."""
    z = torch.randn(n, 2, k, generator=generator, dtype=torch.float64).square().sum(-1)
    return z[:, 0] / (z[:, 0] + z[:, 1])


def vmf_sample(
    mu: Tensor,
    kappa: float,
    n: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    r"""``n`` exact draws of vMF(:math:`\mu`, :math:`\kappa`) by Wood's (1994) algorithm, ``(n, p)``.

    With :math:`m = p - 1`, :math:`b = m / (2\kappa + \sqrt{4\kappa^2 + m^2})`,
    :math:`x_0 = (1 - b)/(1 + b)`, :math:`c = \kappa x_0 + m\log(1 - x_0^2)`: propose
    :math:`Z \sim \mathrm{Beta}(m/2, m/2)`, :math:`W = (1 - (1+b)Z)/(1 - (1-b)Z)`, accept when
    :math:`\kappa W + m\log(1 - x_0 W) - c \ge \log U`; then
    :math:`x = \sqrt{1 - W^2}\, V + W e_p` with :math:`V` uniform on the equator, reflected onto
    :math:`\mu`. Computed in float64.

    Example:
        >>> import torch
        >>> mu = torch.tensor([1.0, 0.0, 0.0])
        >>> x = vmf_sample(mu, 50.0, 20_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        >>> round(float((x @ mu.double()).mean()), 2)  # E[mu.x] = coth(kappa) - 1/kappa = 0.98
        0.98
    """
    mu = _check_mu_kappa(mu, kappa)
    if isinstance(n, bool) or int(n) != n or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    p, m, k = mu.numel(), mu.numel() - 1, float(kappa)
    b = m / (2 * k + math.sqrt(4 * k * k + m * m))
    x0 = (1 - b) / (1 + b)
    c = k * x0 + m * math.log(1 - x0 * x0)
    w = torch.empty(n, dtype=torch.float64)
    todo = torch.arange(n)
    while todo.numel():
        r = todo.numel()
        z = _beta_half(m, r, generator)
        cand = (1 - (1 + b) * z) / (1 - (1 - b) * z)
        u = torch.rand(r, generator=generator, dtype=torch.float64)
        ok = k * cand + m * torch.log1p(-x0 * cand) - c >= torch.log(u)
        w[todo[ok]] = cand[ok]
        todo = todo[~ok]
    v = torch.randn(n, m, generator=generator, dtype=torch.float64)
    v = v / v.norm(dim=1, keepdim=True)
    x = torch.cat([torch.sqrt((1 - w * w).clamp_min(0.0))[:, None] * v, w[:, None]], dim=1)
    e = torch.zeros(p, dtype=torch.float64)
    e[-1] = 1.0
    h = e - mu
    if float(h.norm()) > 1e-12:  # Householder reflection taking e_p to mu
        h = h / h.norm()
        x = x - 2.0 * (x @ h)[:, None] * h
    return x.to(dtype)


def latlon_to_xyz(lat_deg: float | Tensor, lon_deg: float | Tensor) -> Tensor:
    """Unit vectors ``(..., 3)`` of latitudes and longitudes in degrees (z through the north pole).

    Example:
        >>> latlon_to_xyz(90.0, 0.0)
        tensor([6.1232e-17, 0.0000e+00, 1.0000e+00], dtype=torch.float64)
    """
    lat = torch.deg2rad(torch.as_tensor(lat_deg, dtype=torch.float64))
    lon = torch.deg2rad(torch.as_tensor(lon_deg, dtype=torch.float64))
    return torch.stack([torch.cos(lat) * torch.cos(lon), torch.cos(lat) * torch.sin(lon), torch.sin(lat)], -1)


class VMFMixture:
    r"""A mixture :math:`\sum_k w_k\, \mathrm{vMF}(\mu_k, \kappa_k)` on :math:`S^{p-1}`.

    Args:
        means: ``(K, p)`` unit mean directions.
        kappas: ``K`` concentrations.
        weights: ``K`` positive weights (normalised here).

    Example:
        >>> import torch
        >>> mix = VMFMixture(torch.eye(3)[:2], [5.0, 20.0], [0.5, 0.5])
        >>> mix.sample(4, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([4, 3])
    """

    def __init__(self, means: Tensor, kappas: Sequence[float], weights: Sequence[float]) -> None:
        means = torch.as_tensor(means, dtype=torch.float64)
        kap = [float(k) for k in kappas]
        wts = torch.as_tensor([float(w) for w in weights], dtype=torch.float64)
        if means.dim() != 2 or not (len(means) == len(kap) == len(wts)) or len(kap) == 0:
            raise ValueError(
                f"VMFMixture needs means (K, p), K kappas and K weights; got means {tuple(means.shape)}, "
                f"{len(kap)} kappas, {len(wts)} weights"
            )
        if not bool((wts > 0).all()):
            raise ValueError(f"mixture weights must be positive, got {wts.tolist()}")
        for mu, k in zip(means, kap):
            _check_mu_kappa(mu, k)
        self.means, self.kappas, self.weights = means, kap, wts / wts.sum()

    @property
    def dim(self) -> int:
        """Ambient dimension ``p``."""
        return int(self.means.shape[1])

    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """``n`` exact draws, ``(n, p)``, shuffled; randomness from ``generator`` or ``seed``."""
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(int(seed))
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        out = torch.empty(n, self.dim, dtype=torch.float64)
        for k in range(len(self.kappas)):
            idx = (comp == k).nonzero().flatten()
            if idx.numel():
                out[idx] = vmf_sample(
                    self.means[k], self.kappas[k], idx.numel(), generator=generator, dtype=torch.float64
                )
        return out.to(dtype)

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-density w.r.t. the surface measure, ``(B, p) -> (B,)`` (computed in float64)."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")
        terms = torch.stack(
            [vmf_log_prob(x.to(torch.float64), mu, k) for mu, k in zip(self.means, self.kappas)], dim=1
        )
        return torch.logsumexp(terms + self.weights.log(), dim=1).to(x.dtype)


#: ``(latitude, longitude, kappa, weight)`` of the clusters of :func:`earth_like_vmf_mixture`: tight and
#: broad "seismic" clusters along plate boundaries (roughly Japan, the Andes, California, Indonesia,
#: Iceland) and a broad mid-Atlantic one.
EARTH_CLUSTERS: tuple[tuple[float, float, float, float], ...] = (
    (36.0, 139.0, 200.0, 0.22),
    (-18.0, -70.0, 60.0, 0.20),
    (36.0, -119.0, 120.0, 0.14),
    (-4.0, 118.0, 25.0, 0.18),
    (64.5, -19.0, 400.0, 0.08),
    (5.0, -30.0, 6.0, 0.18),
)


def earth_like_vmf_mixture() -> VMFMixture:
    """The fixed 6-cluster vMF mixture on :math:`S^2` of :data:`EARTH_CLUSTERS` (kappa from 6 to 400).

    Example:
        >>> earth_like_vmf_mixture().kappas
        [200.0, 60.0, 120.0, 25.0, 400.0, 6.0]
    """
    lat, lon, kap, w = zip(*EARTH_CLUSTERS)
    return VMFMixture(latlon_to_xyz(torch.tensor(lat), torch.tensor(lon)), kap, w)
