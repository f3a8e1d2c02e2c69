r"""Per-channel standardisation of latents (the first latent-space practice of "Taming feed-forward
reconstruction models as latent encoders for 3D generation"; also LDM's / Stable Diffusion's scale factor).

Latents of a pretrained encoder ``u: (N, C, *grid)`` often have channels of very different location and
spread (an opacity logit next to a colour logit). :class:`LatentStandardizer` measures a shift
:math:`s_c` and a scale :math:`c_c` per channel and maps

.. math:: z = (u - s) / c, \qquad u = c\, z + s \quad\text{(exactly invertible)},

with :math:`s, c` the mean and standard deviation over samples and positions, or (``robust=True``) the
median and :math:`1.4826\,\mathrm{MAD}` (consistent for Gaussian data). ``per_channel=False`` uses one
number for all channels (Stable Diffusion's single scale factor, here with the mean as shift). The
resulting ``shift``/``scale`` are what :class:`~flowforge.latent.LatentModel` takes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["LatentStandardizer"]


class LatentStandardizer(nn.Module):
    """Per-channel (or global) shift and scale of latents ``(N, C, *grid)``, fitted once and invertible.

    Args:
        channels: latent channels ``C``.
        per_channel: one shift and scale per channel (True) or one for all (False).
        robust: median and 1.4826 MAD instead of mean and standard deviation.

    Example:
        >>> u = torch.randn(100, 3, 4, 4) * torch.tensor([1.0, 10.0, 0.1]).view(1, 3, 1, 1) + 5
        >>> st = LatentStandardizer(3).fit(u)
        >>> z = st(u)
        >>> [round(float(v), 3) for v in z.transpose(0, 1).flatten(1).std(1)]
        [1.0, 1.0, 1.0]
        >>> bool(torch.allclose(st.inverse(z), u, atol=1e-5))
        True
    """

    def __init__(self, channels: int, *, per_channel: bool = True, robust: bool = False) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.channels, self.per_channel, self.robust = int(channels), bool(per_channel), bool(robust)
        self.register_buffer("shift", torch.zeros(channels))
        self.register_buffer("scale", torch.ones(channels))

    def _check(self, u: Tensor, what: str) -> None:
        if u.dim() < 2 or u.shape[1] != self.channels:
            raise ValueError(
                f"{what} must be latents (N, {self.channels}, *grid) with channels on axis 1, got {tuple(u.shape)}"
            )

    @torch.no_grad()
    def fit(self, u: Tensor) -> LatentStandardizer:
        """Measure shift and scale on latents ``u: (N, C, *grid)`` (N >= 2); returns ``self``."""
        self._check(u, "fit's latents")
        if len(u) < 2:
            raise ValueError(f"fit needs at least 2 latents, got {len(u)}")
        flat = u.double().transpose(0, 1).flatten(1)
        if not self.per_channel:
            flat = flat.reshape(1, -1)
        if self.robust:
            med = flat.median(1).values
            scale = 1.4826 * (flat - med[:, None]).abs().median(1).values
            shift = med
        else:
            shift, scale = flat.mean(1), flat.std(1)
        if not bool((scale > 0).all()):
            raise ValueError("a latent channel is constant on these latents; it cannot be standardised")
        self.shift.copy_(shift.expand(self.channels).to(self.shift.dtype))
        self.scale.copy_(scale.expand(self.channels).to(self.scale.dtype))
        return self

    def _view(self, u: Tensor) -> tuple[Tensor, Tensor]:
        shape = (1, -1) + (1,) * (u.dim() - 2)
        return self.shift.to(u).view(shape), self.scale.to(u).view(shape)

    def forward(self, u: Tensor) -> Tensor:
        """Standardised latents :math:`(u - s) / c`, same shape as ``u: (N, C, *grid)``."""
        self._check(u, "the latents")
        shift, scale = self._view(u)
        return (u - shift) / scale

    def inverse(self, z: Tensor) -> Tensor:
        """Latents :math:`c z + s` of standardised ``z: (N, C, *grid)``."""
        self._check(z, "the standardised latents")
        shift, scale = self._view(z)
        return z * scale + shift
