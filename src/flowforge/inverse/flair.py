r"""FLAIR: a variational posterior with a flow prior (Erbach et al., 2025, arXiv 2506.02680; prs-eth/FLAIR).

FLAIR fits a point mass :math:`\mu` (a latent, decoded by :math:`D`; :math:`D = I` in pixel space) to

.. math::

    \min_\mu\; \frac{\|y - A D(\mu)\|^2}{2\sigma_y^2}
    + \int \lambda(t)\, E_{q(x_t \mid y)} \|v_\theta(x_t, t) - u_t(x_t \mid n)\|^2\, dt,

with :math:`q(x_t \mid y) = N(t\mu, (1-t)^2 I)`. Written in flowforge's time (the paper's
:math:`s = 1 - t`, :math:`v_{paper} = -v`), one pass over an ascending grid
:math:`t_j \in \mathrm{linspace}(0, t_{max}, N+2)[1:-1]` (:math:`t_{max} = 0.82`, the code's ``ts_min = 0.18``)
does, as ``src/flair/var_post_samp.py`` does:

1. noise :math:`n = \alpha n_{prev} + \sqrt{1-\alpha^2}\,\xi`, with :math:`\alpha = t_j` under deterministic
   trajectory adjustment (DTA; config ``inv_alpha: 1-t`` in SD3 time), :math:`\alpha = 0` without;
2. :math:`x = t\mu + (1-t) n`, :math:`v = v_\theta(x, t)`; under DTA the next anchor is
   :math:`n_{prev} = \hat x_0 = x - t v`;
3. regulariser step (SGD, stop-grad, lr 1): :math:`\mu \leftarrow \mu - w(t)\,[(\mu - n) - v]`, i.e. a pull of
   :math:`\mu` towards the model's data estimate, :math:`(\mu - \hat x_1)/(1-t)`;
4. hard data consistency: up to 15 SGD steps on :math:`w(t)\,\|A D(\mu) - y\|^2` (lr 0.1 for inpainting and
   deblurring, 12 for SR×12 in the paper's latent space), stopping once
   :math:`\|A D(\mu) - y\|^2 <` ``early_stop`` :math:`\cdot \dim y` (FLAIR's 1e-4 is its :math:`\sigma_y^2`);
5. output :math:`D(\mu)`.

Calibrated regulariser weights (CRW): :math:`w(t) = 0.5\,\max(0, \tilde w(t) + \text{shift})` with
:math:`\tilde w = G\, w_{raw} / \sum w_{raw}`, :math:`w_{raw}(t_i) = 1/(\mathrm{err}(t_i) + 10^{-7})` and
:math:`\mathrm{err}(t_i) = E\|v_\theta(x_{t_i}) - (x_1 - x_0)\|^2 / d` on the grid :math:`t_i = i / (G-1)`, looked
up at the nearest grid point (:func:`velocity_errors`, :func:`calibrated_weights`). The same :math:`w(t)`
scales the data term. Ablations: constant ``weights`` (no calibration), ``dta=False``.

**Stability of the regulariser step** (not in the paper). Since :math:`(\mu - n) - v = (\mu - \hat x_1)/(1-t)`,
step 3 is :math:`\mu \leftarrow \mu - \lambda_j (\mu - \hat x_1)` with the *pull*
:math:`\lambda_j = \text{reg\_lr}\, w(t_j)/(1-t_j)` (:meth:`FLAIR.pulls`). For an exact Gaussian prior
:math:`N(m, s^2)` along one direction its mean map is :math:`\mu - m \mapsto (1 - \lambda_j (1-t)^2/(t^2 s^2 +
(1-t)^2))(\mu - m)`: in directions that the prior pins down (:math:`s \to 0`, e.g. MNIST's constant background)
the factor is :math:`1 - \lambda_j`, so every step with :math:`\lambda_j > 2` multiplies the error by
:math:`\lambda_j - 1 > 1`. FLAIR's shipped SD3 table keeps :math:`\max_j \lambda_j = 1.51` (at :math:`t = 0.80`);
a table whose velocity error dips late (MNIST pixels: :math:`w(0.8) \approx 0.72`, :math:`\lambda \approx 3.6`)
diverges: over the pass such errors grow :math:`\prod_j \max(1, |1 - \lambda_j|)`-fold (a constant weight 0.72:
about 200; the constant 0.5: 2.6; the SD3 table: 1). ``max_pull`` caps :math:`\lambda_j` (not in FLAIR); a
warning is raised when the uncapped growth exceeds 10.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from flowforge.inverse.common import (
    check_measurement,
    check_operator,
    prior_event_shape,
    prior_field,
    source_noise,
)
from flowforge.inverse.operators import LinearOperator, check_noise

__all__ = ["FLAIR", "velocity_errors", "calibrated_weights"]


def velocity_errors(
    prior: Any,
    data: Tensor,
    *,
    grid: int = 100,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
    cond: dict[str, Tensor] | None = None,
) -> Tensor:
    r"""The velocity error :math:`\mathrm{err}(t_i) = E\|v_\theta(x_{t_i}, t_i) - (x_1 - x_0)\|^2 / d` on
    :math:`t_i = i/(G-1)`; ``(G,)``.

    It mixes the model's error with the irreducible conditional variance (an exact model of
    :math:`N(m, s^2 I)` has :math:`s^2 / (t^2 s^2 + (1-t)^2)`), as FLAIR's tables do.

    Args:
        prior: the flow (see :class:`FLAIR`).
        data: ``(N, *event)`` samples :math:`x_1` of the prior's data (signals, or latents for a latent prior).
        grid: number ``G`` of grid points (FLAIR: 100).
        batch_size: network batch size.
        generator: source of the noise :math:`x_0`.
        cond: network conditions (sliced to each batch).
    """
    if grid < 2:
        raise ValueError(f"grid must be >= 2 points, got {grid}")
    field = prior_field(prior, cond)
    d = data[0].numel()
    out = []
    with torch.no_grad():
        for i in range(grid):
            t_i = i / (grid - 1)
            total = 0.0
            for x1 in data.split(batch_size):
                gdev = generator.device if generator is not None else None
                x0 = torch.randn(x1.shape, generator=generator, dtype=x1.dtype, device=gdev).to(x1.device)
                t = torch.full((x1.shape[0],), t_i, dtype=x1.dtype, device=x1.device)
                v = field(t_i * x1 + (1 - t_i) * x0, t)
                total += float((v - (x1 - x0)).square().sum())
            out.append(total / (len(data) * d))
    return torch.tensor(out, dtype=torch.float64)


def calibrated_weights(errors: Tensor, *, scale: float = 0.5, shift: float | None = 0.0) -> Tensor:
    r"""FLAIR's CRW table from velocity errors: :math:`\text{scale}\cdot\max(0, G w_{raw}/\sum w_{raw} + \text{shift})`.

    ``shift=None`` reproduces the code's fallback when the config has no ``reg-shift``: subtract the last
    (t=1) weight, which zeroes the weight at the data end. The shipped configs use ``shift=0``.

    Example:
        >>> calibrated_weights(torch.tensor([1.0, 1.0, 2.0, 4.0]))
        tensor([0.7273, 0.7273, 0.3636, 0.1818], dtype=torch.float64)
    """
    err = torch.as_tensor(errors, dtype=torch.float64)
    if err.dim() != 1 or len(err) < 2 or not bool(torch.isfinite(err).all() and (err >= 0).all()):
        raise ValueError("errors must be a 1-D table of >= 2 finite values >= 0 (from velocity_errors)")
    raw = 1.0 / (err + 1e-7)
    w = raw * len(raw) / raw.sum()
    w = w - w[-1] if shift is None else w + shift
    return w.clamp_min(0.0) * scale


class FLAIR:
    r"""FLAIR posterior sampling (one variational fit per measurement and seed).

    Args:
        prior: a :class:`~flowforge.continuous.FlowMatching`, a
            :class:`~flowforge.continuous.FlowGenerator` or a velocity ``v(x, t)`` on the linear path (of
            latents when ``decoder`` is given).
        operator: the measurement operator :math:`A` on signals (decoded latents).
        sigma: measurement noise std :math:`\sigma_y` (sets the default ``early_stop``).
        steps: number ``N`` of grid times (FLAIR: 50).
        t_max: last grid time is below this (FLAIR: 0.82).
        weights: a CRW table ``(G,)`` on :math:`t_i = i/(G-1)` (:func:`calibrated_weights`), or a constant
            weight (no calibration; FLAIR's ``regularizer_weight`` 0.5).
        reg_lr: SGD step of the regulariser (FLAIR: 1).
        data_lr: SGD step of the data term (FLAIR: 0.1 for inpainting/deblurring).
        data_steps: at most this many data steps per grid time (FLAIR: 15).
        early_stop: stop the data steps of a sample once :math:`\|A D(\mu) - y\|^2 <` ``early_stop`` times the
            number of measured entries; default :math:`\max(\sigma_y^2, 10^{-4})`.
        likelihood_weight: extra factor on the data term (FLAIR: 1).
        dta: deterministic trajectory adjustment (the noise of step j is correlated with the previous
            step's :math:`\hat x_0`); ``False``: fresh noise every step.
        max_pull: cap the regulariser step at :math:`\lambda \le` ``max_pull``, where the step is
            :math:`\mu \leftarrow \mu - \lambda (\mu - \hat x_1)` with :math:`\lambda = \text{reg\_lr}\, w(t) / (1-t)`
            (not in FLAIR; ``None``: no cap). :math:`\lambda > 2` overshoots :math:`\hat x_1` and can diverge when
            the CRW table puts large weights near :math:`t_{max}` (it does on MNIST); ``1`` keeps each step a
            convex combination of :math:`\mu` and :math:`\hat x_1`.
        decoder: :math:`D` for a latent prior (default identity).
        encoder: :math:`E` to initialise :math:`\mu = E(A^+ y)`; without it a latent prior starts from
            :math:`N(0, I)` of ``latent_shape``.
        latent_shape: shape of one latent (a decoder without an encoder).
        cond: conditions passed to the network.
        event_shape: the shape of one signal or latent (default: the model's), to refuse measurements of
            other signals.

    Example:
        >>> import torch
        >>> from flowforge.core.gaussian_mixture import GaussianMixture
        >>> from flowforge.inverse import FLAIR, MatrixOperator
        >>> prior = GaussianMixture(torch.ones(2), torch.tensor([[-2.0, 0.0], [2.0, 0.0]]), 0.25)
        >>> op = MatrixOperator(torch.tensor([[1.0, 0.0]]))
        >>> flair = FLAIR(prior.velocity, op, sigma=0.1, data_lr=0.5)
        >>> x = flair(torch.full((4, 1), 2.0), generator=torch.Generator().manual_seed(0))
        >>> bool((op(x) - 2.0).abs().max() < 0.15)  # within about sigma of y
        True
    """

    def __init__(
        self,
        prior: Any,
        operator: LinearOperator,
        *,
        sigma: float,
        steps: int = 50,
        t_max: float = 0.82,
        weights: Tensor | float = 0.5,
        reg_lr: float = 1.0,
        data_lr: float = 0.1,
        data_steps: int = 15,
        early_stop: float | None = None,
        likelihood_weight: float = 1.0,
        dta: bool = True,
        max_pull: float | None = None,
        decoder: Callable[[Tensor], Tensor] | None = None,
        encoder: Callable[[Tensor], Tensor] | None = None,
        latent_shape: tuple[int, ...] | None = None,
        cond: dict[str, Tensor] | None = None,
        event_shape: tuple[int, ...] | None = None,
    ) -> None:
        self.field = prior_field(prior, cond)
        self.event_shape = prior_event_shape(prior, event_shape)
        self.operator = check_operator(operator)
        self.sigma = check_noise(sigma)
        if int(steps) != steps or steps < 1:
            raise ValueError(f"steps must be a whole number >= 1, got {steps}")
        if not 0.0 < t_max <= 1.0:
            raise ValueError(f"t_max must be in (0, 1], got {t_max}; FLAIR uses 0.82")
        if int(data_steps) != data_steps or data_steps < 0:
            raise ValueError(f"data_steps must be a whole number >= 0, got {data_steps}")
        for name, val in (("reg_lr", reg_lr), ("data_lr", data_lr), ("likelihood_weight", likelihood_weight)):
            if not (math.isfinite(val) and val >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {val}")
        if torch.is_tensor(weights):
            if weights.dim() != 1 or len(weights) < 2 or not bool(torch.isfinite(weights).all()):
                raise ValueError(
                    "weights must be a constant or a 1-D CRW table of >= 2 finite values (calibrated_weights)"
                )
            self.weights: Tensor | float = weights.detach().to(torch.float64)
        else:
            if not (math.isfinite(weights) and weights >= 0):
                raise ValueError(f"a constant regulariser weight must be finite and >= 0, got {weights}")
            self.weights = float(weights)
        if decoder is not None and encoder is None and latent_shape is None:
            raise ValueError(
                "a decoder without an encoder needs latent_shape=... to draw the starting latent"
            )
        self.steps, self.t_max = int(steps), float(t_max)
        self.reg_lr, self.data_lr, self.data_steps = float(reg_lr), float(data_lr), int(data_steps)
        self.early_stop = max(self.sigma**2, 1e-4) if early_stop is None else float(early_stop)
        self.likelihood_weight, self.dta = float(likelihood_weight), bool(dta)
        if max_pull is not None and not (math.isfinite(max_pull) and max_pull > 0):
            raise ValueError(f"max_pull must be a finite number > 0 (or None), got {max_pull}; e.g. 1.0")
        self.max_pull = None if max_pull is None else float(max_pull)
        self.decoder, self.encoder = decoder, encoder
        self.latent_shape = None if latent_shape is None else tuple(latent_shape)
        pulls = self.pulls()
        amplification = math.prod(max(1.0, abs(1.0 - p)) for p in pulls)
        if self.max_pull is None and amplification > 10.0:
            worst = max(pulls)
            warnings.warn(
                f"FLAIR's regulariser pull reg_lr * w(t) / (1 - t) reaches {worst:.2f} > 2 at "
                f"t = {self.times()[pulls.index(worst)]:.2f}: the steps with pulls > 2 overshoot and amplify errors "
                f"up to {amplification:.0f}-fold in directions the prior pins down (variance << (1-t)^2/t^2; MNIST's "
                "constant background: it diverges); FLAIR's SD3 table keeps pulls <= 1.52. Pass max_pull=1.0 "
                "(not in FLAIR) or smaller weights if restorations blow up",
                stacklevel=2,
            )

    def times(self) -> list[float]:
        """The grid :math:`t_j = \\mathrm{linspace}(0, t_{max}, N+2)[1:-1]`, ascending (t=0 noise)."""
        return torch.linspace(0.0, self.t_max, self.steps + 2, dtype=torch.float64)[1:-1].tolist()

    def pulls(self) -> list[float]:
        r"""The uncapped pull :math:`\lambda_j = \text{reg\_lr}\, w(t_j) / (1 - t_j)` of each regulariser step
        :math:`\mu \leftarrow \mu - \lambda_j (\mu - \hat x_1)` (> 2 overshoots; see the module notes).

        Example:
            >>> from flowforge.inverse import MatrixOperator
            >>> f = FLAIR(lambda x, t: x, MatrixOperator(torch.eye(1)), sigma=0.1, steps=3, t_max=0.8)
            >>> [round(p, 3) for p in f.pulls()]  # w = 0.5 at t = 0.2, 0.4, 0.6
            [0.625, 0.833, 1.25]
        """
        return [self.reg_lr * self.weight(t) / (1.0 - t) for t in self.times()]

    def weight(self, t: float) -> float:
        """:math:`w(t)`: the constant, or the CRW table at the nearest grid point :math:`i/(G-1)`."""
        if isinstance(self.weights, float):
            return self.weights
        g = len(self.weights)
        return float(self.weights[min(g - 1, max(0, round(t * (g - 1))))])

    def regularizer_gradient(self, mu: Tensor, n: Tensor, t: float) -> tuple[Tensor, Tensor]:
        r"""FLAIR's stop-gradient regulariser gradient :math:`(\mu - n) - v_\theta(x, t)` at
        :math:`x = t\mu + (1-t) n`, and :math:`\hat x_0 = x - t v` (the DTA anchor); each like ``mu``.

        Its expectation over :math:`n \sim N(0, I)` for an exact Gaussian prior :math:`N(m, S)` is
        :math:`(1-t) C_t^{-1} (\mu - m)`, :math:`C_t = t^2 S + (1-t)^2 I` (sheet §6(5a)).
        """
        x = t * mu + (1 - t) * n
        v = self.field(x, torch.full((mu.shape[0],), t, dtype=mu.dtype, device=mu.device))
        return (mu - n) - v, x - t * v

    def _decode(self, mu: Tensor) -> Tensor:
        return mu if self.decoder is None else self.decoder(mu)

    def __call__(
        self,
        y: Tensor,
        *,
        generator: torch.Generator | None = None,
        mu0: Tensor | None = None,
        callback: Callable[[float, Tensor, Tensor], None] | None = None,
    ) -> Tensor:
        """One restoration per measurement: ``y: (B, *measured)`` -> :math:`D(\\mu)` ``(B, *event)``.

        Args:
            y: the measurements (repeat one measurement for several posterior samples).
            generator: source of the noise (the fit is otherwise deterministic).
            mu0: start from this :math:`\\mu` instead of :math:`E(A^+ y)`.
            callback: called after each grid time as ``callback(t, mu, reg_step)`` with the new :math:`\\mu`
                and the regulariser step just taken (``(B, *latent)``; for diagnostics).
        """
        op = self.operator
        x_like = source_noise(op, y, op.adjoint(y), None, self.event_shape) if self.decoder is None else None
        if x_like is not None:
            check_measurement(op, y, x_like)
        if mu0 is not None:
            mu = mu0.detach().clone()
        elif self.decoder is None:
            mu = op.pseudo_inverse(y).detach().clone()
        elif self.encoder is not None:
            with torch.no_grad():
                mu = self.encoder(op.pseudo_inverse(y)).detach().clone()
        else:
            gdev = generator.device if generator is not None else None
            mu = torch.randn(
                (y.shape[0], *self.latent_shape), generator=generator, dtype=y.dtype, device=gdev
            )
            mu = mu.to(y.device)
        if self.decoder is not None:
            with torch.no_grad():
                check_measurement(op, y, self._decode(mu))
        dims = tuple(range(1, y.dim()))
        measured = (torch.ones_like(y) * op.noise_support(y)).sum(dims)
        gdev = generator.device if generator is not None else None

        def noise() -> Tensor:
            return torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=gdev).to(mu.device)

        anchor = noise()
        for t in self.times():
            w = self.weight(t)
            alpha = t if self.dta else 0.0
            n = alpha * anchor + math.sqrt(1.0 - alpha**2) * noise()
            with torch.no_grad():
                grad, x0_hat = self.regularizer_gradient(mu, n, t)
                if self.dta:
                    anchor = x0_hat
                step = self.reg_lr * w
                if self.max_pull is not None:
                    step = min(step, self.max_pull * (1.0 - t))
                mu = mu - step * grad
            mu = self._data_term(mu, y, w * self.likelihood_weight, dims, measured)
            if callback is not None:
                callback(t, mu, step * grad)
        with torch.no_grad():
            return self._decode(mu)

    def _data_term(
        self, mu: Tensor, y: Tensor, weight: float, dims: tuple[int, ...], measured: Tensor
    ) -> Tensor:
        """Up to ``data_steps`` SGD steps on ``weight * ||A D(mu) - y||^2`` per sample, with early stopping."""
        op = self.operator
        for _ in range(self.data_steps):
            with torch.enable_grad():
                m = mu.detach().requires_grad_(True)
                per = (op.forward(self._decode(m)) - y).square().sum(dims)
                active = per.detach() >= self.early_stop * measured
                if not bool(active.any()):
                    break
                (grad,) = torch.autograd.grad(weight * per.sum(), m)
            mask = active.to(mu.dtype).reshape(-1, *([1] * (mu.dim() - 1)))
            mu = (mu - self.data_lr * grad * mask).detach()
        return mu
