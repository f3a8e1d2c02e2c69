r"""A Gaussian-mixture prior whose flow is known in closed form, and its exact linear-Gaussian posterior.

Analytic truth for tests and benchmarks of guidance, inverse problems and reward fine-tuning
(formula sheet ``verified-guidance-finetune-inverse.md``, §1; derived, Monte-Carlo checked there).

Prior :math:`p(x_1) = \sum_k \pi_k N(m_k, S_k)` on :math:`\mathbb{R}^d`, source :math:`x_0 \sim N(0, I)`, linear
path :math:`x_t = t x_1 + (1-t) x_0` (t=0 noise, t=1 data). Then

.. math::

    p_t(x) = \sum_k \pi_k N(x; t m_k, C_k(t)),\qquad C_k(t) = t^2 S_k + (1-t)^2 I,

    v(x, t) = \sum_k \gamma_k(x, t)\,\big[m_k + (t S_k - (1-t) I)\, C_k^{-1} (x - t m_k)\big],

with responsibilities :math:`\gamma_k \propto \pi_k N(x; t m_k, C_k)`. Under a measurement
:math:`y = A x_1 + e`, :math:`e \sim N(0, \sigma_y^2 I)`, the posterior is again a mixture (Kalman form, valid for
singular :math:`S_k`): :math:`G_k = A S_k A^\top + \sigma_y^2 I`, :math:`K_k = S_k A^\top G_k^{-1}`,
:math:`\tilde m_k = m_k + K_k (y - A m_k)`, :math:`\tilde S_k = S_k - K_k A S_k`,
:math:`\tilde\pi_k \propto \pi_k N(y; A m_k, G_k)`; its flow is :meth:`GaussianMixture.velocity` of
:meth:`GaussianMixture.posterior`.

Every covariance is diagonalised once, :math:`S_k = U_k \Lambda_k U_k^\top`, so :math:`C_k(t)` is diagonal in
the same basis and a velocity costs :math:`O(B K d^2)` for any per-sample times.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["GaussianMixture"]


class GaussianMixture:
    r"""A Gaussian mixture :math:`\sum_k \pi_k N(m_k, S_k)` as a flow prior with closed-form velocity.

    Args:
        weights: ``(K,)`` positive mixture weights (normalised here).
        means: ``(K, d)`` component means :math:`m_k`.
        covs: ``(K, d, d)`` symmetric positive semi-definite covariances :math:`S_k`, or ``(K,)`` /
            a float for isotropic :math:`s_k^2 I`.

    Example:
        >>> import torch
        >>> gmm = GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-2.0, 0.0], [2.0, 0.0]]), 0.25)
        >>> x = torch.zeros(1, 2)
        >>> gmm.velocity(x, torch.zeros(1))  # v(x, 0) = E[x1] - x
        tensor([[0., 0.]])
        >>> post = gmm.posterior(torch.tensor([[1.0, 0.0]]), torch.tensor([1.5]), sigma=0.5)
        >>> post.weights.round(decimals=3)
        tensor([0., 1.])
    """

    def __init__(self, weights: Tensor, means: Tensor, covs: Tensor | float) -> None:
        if means.dim() != 2:
            raise ValueError(f"means must be (K, d), got shape {tuple(means.shape)}")
        k, d = means.shape
        if weights.shape != (k,):
            raise ValueError(f"weights must be (K,) = ({k},) like the means, got {tuple(weights.shape)}")
        if not bool((weights > 0).all()):
            raise ValueError("mixture weights must be positive; drop components with weight 0")
        covs = torch.as_tensor(covs, dtype=means.dtype, device=means.device)
        if covs.dim() == 0:
            covs = covs.expand(k)
        if covs.dim() == 1:
            covs = covs[:, None, None] * torch.eye(d, dtype=means.dtype, device=means.device)
        if covs.shape != (k, d, d):
            raise ValueError(
                f"covs must be (K, d, d) = ({k}, {d}, {d}), (K,) or a float, got {tuple(covs.shape)}"
            )
        self.weights = weights / weights.sum()
        self.means = means
        self.covs = 0.5 * (covs + covs.transpose(-1, -2))
        lam, u = torch.linalg.eigh(self.covs)
        if bool((lam < -1e-9 * lam.abs().amax().clamp_min(1.0)).any()):
            raise ValueError("covariances must be positive semi-definite")
        self._lam, self._u = lam.clamp_min(0.0), u

    @property
    def dim(self) -> int:
        """The dimension :math:`d`."""
        return self.means.shape[1]

    def __repr__(self) -> str:
        return f"GaussianMixture(K={len(self.weights)}, d={self.dim})"

    def mean(self) -> Tensor:
        r""":math:`E[x_1] = \sum_k \pi_k m_k`, ``(d,)``."""
        return self.weights @ self.means

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """``n`` exact draws, ``(n, d)``."""
        return self.sample_with_labels(n, generator=generator)[0]

    def sample_with_labels(
        self, n: int, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``n`` exact draws ``(n, d)`` and the component each came from ``(n,)``."""
        dev, dt = self.means.device, self.means.dtype
        k = torch.multinomial(self.weights.to(torch.float64).cpu(), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=dt).to(dev)
        k = k.to(dev)
        root = self._u * self._lam.sqrt()[:, None, :]  # S_k = root root^T
        return self.means[k] + torch.einsum("nij,nj->ni", root[k], z), k

    def _parts(self, x: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor, Tensor]:
        """``t (B, 1, 1)``, rotated residual ``z = U^T (x - t m) (B, K, d)``, eigenvalues of ``C_k (B, K, d)``."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must be (B, d) with d = {self.dim}, got shape {tuple(x.shape)}")
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must be a float or (B,) = ({x.shape[0]},), got shape {tuple(t.shape)}")
        tb = t[:, None, None]
        z = torch.einsum("kij,bki->bkj", self._u, x[:, None, :] - tb * self.means)
        c = tb**2 * self._lam + (1 - tb) ** 2
        return tb, z, c

    def _log_components(self, z: Tensor, c: Tensor) -> Tensor:
        """``log pi_k N(x; t m_k, C_k)``, ``(B, K)``."""
        return (
            self.weights.log()
            - 0.5 * (z**2 / c).sum(-1)
            - 0.5 * c.log().sum(-1)
            - 0.5 * self.dim * math.log(2 * math.pi)
        )

    def marginal_log_prob(self, x: Tensor, t: Tensor | float) -> Tensor:
        r""":math:`\log p_t(x)` of the path's marginal at time ``t``; ``x: (B, d)``, returns ``(B,)``."""
        _, z, c = self._parts(x, t)
        return torch.logsumexp(self._log_components(z, c), -1)

    def log_prob(self, x: Tensor) -> Tensor:
        r""":math:`\log p(x)` of the mixture itself (``t = 1``); ``(B,)``. Needs non-singular :math:`S_k`."""
        return self.marginal_log_prob(x, 1.0)

    def responsibilities(self, x: Tensor, t: Tensor | float = 1.0) -> Tensor:
        r""":math:`\gamma_k(x, t)`, ``(B, K)``; at ``t = 1`` the posterior component probabilities of ``x``."""
        _, z, c = self._parts(x, t)
        return torch.softmax(self._log_components(z, c), -1)

    def velocity(self, x: Tensor, t: Tensor | float) -> Tensor:
        r"""The exact marginal velocity :math:`v(x, t)` of the linear path; ``x: (B, d)``, ``t: (B,)``."""
        tb, z, c = self._parts(x, t)
        gamma = torch.softmax(self._log_components(z, c), -1)
        rot = (tb * self._lam - (1 - tb)) / c * z  # (t Lambda - (1 - t)) C^-1 z in the eigenbasis
        vk = self.means + torch.einsum("kij,bkj->bki", self._u, rot)
        return (gamma[..., None] * vk).sum(1)

    def x1_mean(self, x: Tensor, t: Tensor | float) -> Tensor:
        r""":math:`E[x_1 \mid x_t = x] = \sum_k \gamma_k [m_k + t S_k C_k^{-1} (x - t m_k)]`, ``(B, d)``."""
        tb, z, c = self._parts(x, t)
        gamma = torch.softmax(self._log_components(z, c), -1)
        ek = self.means + torch.einsum("kij,bkj->bki", self._u, tb * self._lam / c * z)
        return (gamma[..., None] * ek).sum(1)

    def score(self, x: Tensor, t: Tensor | float) -> Tensor:
        r""":math:`\nabla_x \log p_t(x) = -(x - t \hat x_1) / (1-t)^2`, ``(B, d)`` (``t < 1``)."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        tb = (t.expand(x.shape[0]) if t.dim() == 0 else t)[:, None]
        return -(x - tb * self.x1_mean(x, t)) / (1 - tb) ** 2

    def _check_measurement(self, a: Tensor, y: Tensor, sigma: float) -> None:
        if a.dim() != 2 or a.shape[1] != self.dim:
            raise ValueError(f"A must be a (m, d) matrix with d = {self.dim}, got shape {tuple(a.shape)}")
        if y.shape != (a.shape[0],):
            raise ValueError(
                f"y must be one measurement of shape (m,) = ({a.shape[0]},), got {tuple(y.shape)}; "
                "for several measurements build one posterior each"
            )
        if not sigma >= 0:
            raise ValueError(f"sigma must be >= 0 (the noise std of y = A x + sigma n), got {sigma}")

    def posterior(self, a: Tensor, y: Tensor, sigma: float) -> GaussianMixture:
        r"""The exact posterior :math:`p(x_1 \mid y)` for :math:`y = A x_1 + \sigma n` as a new mixture.

        Args:
            a: ``(m, d)`` measurement matrix :math:`A`.
            y: ``(m,)`` one measurement.
            sigma: noise std :math:`\sigma_y \ge 0` (0 needs :math:`A S_k A^\top` invertible).
        """
        self._check_measurement(a, y, sigma)
        eye = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
        g = a @ self.covs @ a.T + sigma**2 * eye  # (K, m, m)
        gain = torch.linalg.solve(g, a @ self.covs).transpose(-1, -2)  # S A^T G^-1 (G symmetric)
        resid = y - self.means @ a.T  # (K, m)
        means = self.means + torch.einsum("kij,kj->ki", gain, resid)
        covs = self.covs - gain @ a @ self.covs
        log_w = self.weights.log() + torch.distributions.MultivariateNormal(
            self.means @ a.T, covariance_matrix=g
        ).log_prob(y)
        return GaussianMixture(torch.softmax(log_w, 0), means, covs)

    def measurement_log_likelihood(
        self, x: Tensor, t: Tensor | float, a: Tensor, y: Tensor, sigma: float
    ) -> Tensor:
        r"""The exact :math:`\log p(y \mid x_t = x)` under :math:`y = A x_1 + \sigma n`; ``(B,)``.

        :math:`p(y \mid x_t) = \sum_k \gamma_k(x, t)\, N(y; A E[x_1 \mid x, k], A\,\mathrm{Cov}[x_1 \mid x, k] A^\top
        + \sigma^2 I)` with :math:`\mathrm{Cov}[x_1 \mid x, k] = S_k - t^2 S_k C_k^{-1} S_k`. Its gradient links
        the prior and posterior velocities: :math:`v(x, t \mid y) = v(x, t) + \frac{1-t}{t} \nabla_x \log p(y
        \mid x_t = x)` (sheet §0).
        """
        self._check_measurement(a, y, sigma)
        tb, z, c = self._parts(x, t)
        gamma_log = torch.log_softmax(self._log_components(z, c), -1)  # (B, K)
        ek = self.means + torch.einsum("kij,bkj->bki", self._u, tb * self._lam / c * z)  # (B, K, d)
        post_lam = self._lam - tb**2 * self._lam**2 / c  # (B, K, d) eigenvalues of Cov[x1 | x, k]
        au = torch.einsum("mi,kij->kmj", a, self._u)  # (K, m, d)
        cov_y = torch.einsum("kmj,bkj,knj->bkmn", au, post_lam, au) + sigma**2 * torch.eye(
            a.shape[0], dtype=x.dtype, device=x.device
        )
        log_n = torch.distributions.MultivariateNormal(ek @ a.T, covariance_matrix=cov_y).log_prob(y)
        return torch.logsumexp(gamma_log + log_n, -1)
