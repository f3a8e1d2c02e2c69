r"""A learned stationary score :math:`s_\theta(z) \approx \nabla\log\rho(z)` of an AOUP, with its training loss.

:class:`StationaryScore` wraps any flowforge network and fixes what it is trained by:

- ``loss="dsm"``: denoising score matching on the SDE's own increments (the paper's loss,
  :func:`~flowforge.apps.active_matter.increment_dsm_loss`), step ``dt``, antithetic pairs;
- ``loss="ism"``: implicit score matching with an ``"exact"`` or ``"hutchinson"`` divergence
  (:func:`~flowforge.apps.active_matter.implicit_score_matching_loss`), over the noisy coordinates.

With ``baseline="equilibrium"`` the network learns only the residual about the exact ``v0 = 0`` score,
``s = s_eq + net`` (:func:`~flowforge.apps.active_matter.equilibrium_score`): the stiff repulsion is then
known rather than learned, which matters at low activity, where it dominates the score.

The score is time-independent: the network is called as ``net(z, t)`` (the flowforge contract) with
``t = 0``, and networks built for it (:class:`~flowforge.nn.ParticleNet`) ignore ``t``. ``loss(batch)``
takes a ``(B, N, 2, d)`` batch of stationary states (what the trainer draws from the simulated data) and
draws its noise from torch's global RNG, which the trainer seeds.

Example:
    >>> import torch
    >>> from flowforge.nn import MLP
    >>> from flowforge.apps.active_matter import AOUP, simulate_stationary
    >>> sys = AOUP(A=1.0, v0=1.0, eps=0.1)
    >>> model = StationaryScore(MLP(dim=(1, 2, 2), width=16, depth=2), sys, loss="dsm", dt=0.1)
    >>> z = simulate_stationary(sys, 64, generator=torch.Generator().manual_seed(0)).float()
    >>> model(z).shape, model.loss(z).ndim
    (torch.Size([64, 1, 2, 2]), 0)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from flowforge.apps.active_matter.aoup import AOUP
from flowforge.apps.active_matter.entropy_production import EntropyProduction, entropy_production
from flowforge.apps.active_matter.equilibrium import equilibrium_score
from flowforge.apps.active_matter.implicit_score_matching import implicit_score_matching_loss
from flowforge.apps.active_matter.increment_dsm import increment_dsm_loss
from flowforge.apps.active_matter.simulator import StepMethod

__all__ = ["StationaryScore", "SCORE_LOSSES", "SCORE_BASELINES"]

#: the training losses :class:`StationaryScore` knows
SCORE_LOSSES = ("dsm", "ism")
#: what the network's output is added to
SCORE_BASELINES = ("none", "equilibrium")


class StationaryScore(nn.Module):
    """A network as the stationary score of ``system``, trained by ``loss(batch)``.

    Args:
        net: ``net(z, t) -> (B, N, 2, d)`` (e.g. :class:`~flowforge.nn.ParticleNet`, or an
            :class:`~flowforge.nn.MLP` built with ``dim=(N, 2, d)``).
        system: the AOUP.
        loss: ``"dsm"`` (increments of the SDE) or ``"ism"`` (implicit score matching).
        dt: the increment's time step for ``"dsm"``.
        method: the integrator of the increments (``"auto"``: exact for linear systems, else EM).
        antithetic: antithetic increments for ``"dsm"``.
        divergence: ``"exact"`` or ``"hutchinson"`` for ``"ism"``.
        n_probes: Hutchinson probes per sample.
        baseline: ``"none"`` (the network is the score) or ``"equilibrium"`` (the network is the residual
            about the exact ``v0 = 0`` score; needs ``eps > 0``).
    """

    def __init__(
        self,
        net: nn.Module,
        system: AOUP,
        *,
        loss: str = "dsm",
        dt: float = 1e-2,
        method: StepMethod = "auto",
        antithetic: bool = True,
        divergence: str = "hutchinson",
        n_probes: int = 1,
        baseline: str = "none",
    ) -> None:
        super().__init__()
        if loss not in SCORE_LOSSES:
            raise ValueError(f"unknown score loss {loss!r}; write loss='dsm' (SDE increments) or loss='ism'")
        if divergence not in ("exact", "hutchinson"):
            raise ValueError(f"unknown divergence {divergence!r}; write divergence='exact' or 'hutchinson'")
        if baseline not in SCORE_BASELINES:
            raise ValueError(
                f"unknown score baseline {baseline!r}; write baseline='none' or baseline='equilibrium'"
            )
        if baseline == "equilibrium" and system.eps <= 0:
            raise ValueError("baseline='equilibrium' needs eps > 0 (no equilibrium density otherwise)")
        self.baseline = baseline
        self.net, self.system = net, system
        self.loss_name, self.dt, self.method = loss, float(dt), method
        self.antithetic, self.divergence, self.n_probes = antithetic, divergence, int(n_probes)

    def forward(self, z: Tensor) -> Tensor:
        """The score ``(B, N, 2, d)`` at states ``z`` of the same shape (``t = 0`` is passed and ignored)."""
        s = self.residual(z)
        return s + equilibrium_score(self.system, z) if self.baseline == "equilibrium" else s

    def residual(self, z: Tensor) -> Tensor:
        """The network's output ``(B, N, 2, d)``: the score itself, or its part beyond the baseline."""
        self.system.check_state(z)
        return self.net(z, torch.zeros(z.shape[0], dtype=z.dtype, device=z.device))

    def loss(self, batch: Tensor) -> Tensor:
        """The training loss on a batch of stationary states ``(B, N, 2, d)``."""
        if self.loss_name == "dsm":
            return increment_dsm_loss(
                self, self.system, batch, self.dt, method=self.method, antithetic=self.antithetic
            )
        return implicit_score_matching_loss(
            self,
            batch,
            divergence=self.divergence,  # type: ignore[arg-type]
            n_probes=self.n_probes,
            mask=self.system.noisy_like(batch),
        )

    def entropy_production(self, z: Tensor, **options: Any) -> EntropyProduction:
        """Both EPR estimators with this score on stationary states ``z`` (see :func:`entropy_production`)."""
        was = self.training
        self.eval()
        try:
            z = z.to(next(self.parameters()).dtype)
            if self.baseline == "equilibrium":
                return entropy_production(self.system, z, self.residual, residual=True, **options)
            return entropy_production(self.system, z, self, **options)
        finally:
            self.train(was)
