"""Closed forms for the Gaussian-to-Gaussian flow used across the tests (float64).

Source x0 ~ N(0, I), data x1 ~ N(m, s^2 I). Along x_t = alpha x1 + sigma x0 (+ gamma z) the marginal is
N(alpha m, v_t I) with v_t = alpha^2 s^2 + sigma^2 (+ gamma^2), so

    velocity*(x, t) = alpha' m + (d std / dt / std) (x - alpha m),   score*(x, t) = -(x - alpha m) / v_t,
    E[x1 | x_t = x] = m + alpha s^2 / v_t (x - alpha m).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def _b(c: Tensor) -> Tensor:
    return c[:, None]


@dataclass
class GaussianFlow:
    path: object
    m: Tensor
    s: float

    def _coeffs(self, t: Tensor):
        sch = self.path.schedule(t)
        a, da, sg, dsg = sch.alpha, sch.d_alpha, sch.sigma, sch.d_sigma
        g = dg = torch.zeros_like(t)
        if hasattr(self.path, "gamma"):
            g, dg = self.path.gamma(t)
        var = a**2 * self.s**2 + sg**2 + g**2
        dvar_half = a * da * self.s**2 + sg * dsg + g * dg  # = std * d std / dt
        return a, da, var, dvar_half

    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        a, da, var, dvh = self._coeffs(t)
        return _b(da) * self.m + _b(dvh / var) * (x - _b(a) * self.m)

    def score(self, x: Tensor, t: Tensor) -> Tensor:
        a, _, var, _ = self._coeffs(t)
        return -(x - _b(a) * self.m) / _b(var)

    def x1_mean(self, x: Tensor, t: Tensor) -> Tensor:
        a, _, var, _ = self._coeffs(t)
        return self.m + _b(a * self.s**2 / var) * (x - _b(a) * self.m)

    def log_prob(self, x: Tensor) -> Tensor:
        d = x.shape[1]
        return torch.distributions.Normal(self.m, self.s).log_prob(x).sum(1) if d else x[:, 0]
