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


@dataclass
class DiagGaussianTargets:
    """Closed forms of every regression target for source N(0, I), data N(m, diag(s^2)), float64.

    On a path ``x_t = alpha x1 + sigma x0 (+ gamma z)`` the marginal is N(alpha m, diag(v_t)) with
    ``v_t = alpha^2 s^2 + sigma^2 (+ gamma^2)`` per coordinate, and each regression target ``u`` has
    ``E[u | x_t = x] = intercept + slope * (x - alpha m)`` coordinatewise (jointly Gaussian, diagonal):

        x1: slope alpha s^2 / v, intercept m;   x0: sigma / v, 0;   denoiser (z): gamma / v, 0;
        score (-x0/sigma or -z/gamma): -1 / v, 0;   velocity: alpha' (x1) + sigma' (x0) + gamma' (z).
    """

    path: object
    m: Tensor
    s: Tensor

    def coefficients(self, t: Tensor) -> dict[str, Tensor]:
        """Per-time, per-coordinate ``alpha, d_alpha, sigma, d_sigma, gamma, d_gamma, v``; each ``(B, d)``."""
        sch = self.path.schedule(t)
        g = dg = torch.zeros_like(t)
        if hasattr(self.path, "gamma"):
            g, dg = self.path.gamma(t)
        c = {
            "alpha": sch.alpha,
            "d_alpha": sch.d_alpha,
            "sigma": sch.sigma,
            "d_sigma": sch.d_sigma,
            "gamma": g,
            "d_gamma": dg,
        }
        c = {k: _b(v).expand(-1, self.m.shape[0]) for k, v in c.items()}
        c["v"] = c["alpha"] ** 2 * self.s**2 + c["sigma"] ** 2 + c["gamma"] ** 2
        return c

    def affine(self, prediction: str, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(slope, offset)``, each ``(B, d)``, with ``E[target | x_t = x] = offset + slope * x``."""
        c = self.coefficients(t)
        k = {
            "x1": c["alpha"] * self.s**2 / c["v"],
            "x0": c["sigma"] / c["v"],
            "denoiser": c["gamma"] / c["v"],
            "score": -1 / c["v"],
        }
        k["velocity"] = c["d_alpha"] * k["x1"] + c["d_sigma"] * k["x0"] + c["d_gamma"] * k["denoiser"]
        mean_x = c["alpha"] * self.m
        intercept = (
            c["d_alpha"] * self.m if prediction == "velocity" else (self.m if prediction == "x1" else 0)
        )
        slope = k[prediction]
        return slope, intercept - slope * mean_x

    def field(self, prediction: str):
        """The exact prediction ``f(x, t) = E[target | x_t = x]`` as a function of ``x: (B, d)``, ``t: (B,)``."""

        def f(x: Tensor, t: Tensor) -> Tensor:
            slope, offset = self.affine(prediction, t)
            return offset + slope * x

        return f

    def marginal(self, t: float) -> tuple[Tensor, Tensor]:
        """Mean and per-coordinate variance of ``x_t`` at one time ``t``; each ``(d,)``."""
        c = self.coefficients(torch.tensor([t], dtype=self.m.dtype))
        return (c["alpha"] * self.m)[0], c["v"][0]


def linear_std(t: Tensor, c: Tensor) -> Tensor:
    """Std ``(B, d)`` of ``x_t = t x1 + (1 - t) x0`` for ``x0 ~ N(0, I)``, ``x1 ~ N(m, diag c^2)``."""
    return torch.sqrt(t[:, None] ** 2 * c**2 + (1 - t[:, None]) ** 2)


def linear_velocity(x: Tensor, t: Tensor, m: Tensor, c: Tensor) -> Tensor:
    """The exact marginal velocity of that linear path at ``x: (B, d)``, ``t: (B,)``."""
    sig = linear_std(t, c)
    dsig = (t[:, None] * c**2 - (1 - t[:, None])) / sig
    return m + dsig / sig * (x - t[:, None] * m)


def linear_flow_map(x: Tensor, s: Tensor, t: Tensor, m: Tensor, c: Tensor) -> Tensor:
    """The exact flow map ``X_{s,t}(x)`` of that velocity (an affine map per coordinate)."""
    return t[:, None] * m + linear_std(t, c) / linear_std(s, c) * (x - s[:, None] * m)
