r"""A differentiable blob renderer and a decoder whose latent codes have known factors.

The renderer draws one Gaussian blob of position :math:`(x, y)`, width :math:`\sigma` and brightness
:math:`b` on an :math:`H\times W` grid,

.. math:: I_{ij} = b \exp\!\big(-((j - x)^2 + (i - y)^2) / (2\sigma^2)\big).

:class:`BlobDecoder` is the generator :math:`G: z\mapsto` image of a latent-traversal experiment with
ground truth (option (b) of the issue: the renderer composed with a fixed random invertible mixing). A
latent :math:`z\in\mathbb{R}^4` is mixed into pre-factors :math:`w = M(z)` by a random rotation :math:`A`
and two additive coupling layers with strength ``bend``,

.. math::
    h = A z,\quad h_{1:2} \mathrel{+}= \beta \tanh(B_1 h_{3:4}),\quad h_{3:4} \mathrel{+}= \beta\tanh(B_2 h_{1:2}),
    \quad w = h,

and the normalised factors are :math:`f = \operatorname{sigmoid}(w)\in(0,1)^4` (x, y, size, brightness,
each as a share of its range). :math:`M` is invertible in closed form, so latent codes are made by drawing
independent pre-factors :math:`w_i\sim N(0, s_i^2)` (distinct spreads ``spreads``) and inverting
(:meth:`BlobDecoder.sample_codes`): the code distribution is that of an encoder's codes, not an isotropic
Gaussian, and PCA of the codes has something to find. ``bend = 0`` makes the factor directions straight
lines in :math:`z` (the rows of :math:`A`); ``bend > 0`` bends them, so that no global linear direction
moves one factor alone.

Example:
    >>> import torch
    >>> from flowforge.apps.traversal import BlobDecoder
    >>> dec = BlobDecoder(size=16, bend=1.0, seed=0)
    >>> z = dec.sample_codes(5, generator=torch.Generator().manual_seed(1))
    >>> dec(z).shape, dec.factors(z).shape
    (torch.Size([5, 1, 16, 16]), torch.Size([5, 4]))
    >>> torch.allclose(dec.unmix(dec.mix(z)), z, atol=1e-5)
    True
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["FACTOR_NAMES", "BlobDecoder", "render_blobs"]

#: the four factors, in the order of :meth:`BlobDecoder.factors`
FACTOR_NAMES = ("x", "y", "size", "brightness")


def render_blobs(factors: Tensor, size: int = 16) -> Tensor:
    r"""Render one Gaussian blob an image from physical factors.

    Args:
        factors: ``(B, 4)`` as ``(x, y, sigma, brightness)``; ``x, y`` in pixels (column, row), ``sigma > 0``
            in pixels.
        size: the image side ``H = W``.

    Returns:
        ``(B, 1, size, size)`` images :math:`b\exp(-r^2/2\sigma^2)`.
    """
    if factors.dim() != 2 or factors.shape[1] != 4:
        raise ValueError(
            f"render_blobs needs factors of shape (B, 4) = (x, y, sigma, brightness), got {tuple(factors.shape)}"
        )
    grid = torch.arange(size, dtype=factors.dtype, device=factors.device)
    x, y, sigma, b = (factors[:, i, None, None] for i in range(4))
    r2 = (grid[None, None, :] - x) ** 2 + (grid[None, :, None] - y) ** 2
    return (b * torch.exp(-r2 / (2 * sigma**2)))[:, None]


class BlobDecoder(nn.Module):
    r"""Generator :math:`G(z) = \text{render}(\text{phys}(\operatorname{sigmoid}(M(z))))` with known factors.

    Args:
        size: image side (16 by default; 8 works too).
        bend: strength :math:`\beta` of the two coupling layers (0: the factors are linear in ``z``).
        spreads: standard deviations :math:`s_i` of the pre-factors of :meth:`sample_codes`.
        seed: seed of the random rotation and coupling matrices (fixed, not trained).
        margin: the blob centre stays ``margin`` pixels inside the border.
        sigma_range: the blob width range in pixels.
        brightness_range: the brightness range.

    The parameters are buffers: the decoder is fixed, and rebuilt identically from its arguments.
    """

    latent_dim = 4
    num_factors = 4

    def __init__(
        self,
        size: int = 16,
        bend: float = 1.0,
        spreads: tuple[float, ...] = (1.6, 1.3, 1.0, 0.7),
        seed: int = 0,
        *,
        margin: float = 2.5,
        sigma_range: tuple[float, float] = (0.8, 2.5),
        brightness_range: tuple[float, float] = (0.3, 1.0),
    ) -> None:
        super().__init__()
        if size < 6:
            raise ValueError(f"BlobDecoder needs size >= 6 pixels, got size={size}; e.g. size=16")
        if len(spreads) != 4 or min(spreads) <= 0:
            raise ValueError(f"spreads must be 4 positive standard deviations, got {spreads}")
        if bend < 0:
            raise ValueError(f"bend is a coupling strength >= 0, got bend={bend}")
        self.size, self.bend, self.margin = int(size), float(bend), float(margin)
        self.sigma_range, self.brightness_range = tuple(sigma_range), tuple(brightness_range)
        g = torch.Generator().manual_seed(int(seed))
        q, r = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
        q = q * torch.sign(torch.diagonal(r))
        self.register_buffer("rotation", q.float())
        self.register_buffer("couple", torch.randn(2, 2, 2, generator=g).float())
        self.register_buffer("spreads", torch.tensor(spreads, dtype=torch.float32))

    # -- the mixing
    def mix(self, z: Tensor) -> Tensor:
        """Pre-factors ``w = M(z)``, ``(B, 4) -> (B, 4)``."""
        h = z @ self.rotation.to(z.dtype).T
        c = self.couple.to(z.dtype)
        a, b = h[:, :2], h[:, 2:]
        a = a + self.bend * torch.tanh(b @ c[0])
        b = b + self.bend * torch.tanh(a @ c[1])
        return torch.cat([a, b], dim=1)

    def unmix(self, w: Tensor) -> Tensor:
        """The inverse ``z = M^{-1}(w)``."""
        c = self.couple.to(w.dtype)
        a, b = w[:, :2], w[:, 2:]
        b = b - self.bend * torch.tanh(a @ c[1])
        a = a - self.bend * torch.tanh(b @ c[0])
        return torch.cat([a, b], dim=1) @ self.rotation.to(w.dtype)

    # -- the factors
    def factors(self, z: Tensor) -> Tensor:
        """Normalised factors ``(B, 4)`` in ``(0, 1)``: x, y, size, brightness as shares of their ranges."""
        if z.dim() != 2 or z.shape[1] != 4:
            raise ValueError(f"BlobDecoder takes latents of shape (B, 4), got {tuple(z.shape)}")
        return torch.sigmoid(self.mix(z))

    def physical(self, f: Tensor) -> Tensor:
        """Normalised factors -> ``(x, y, sigma, brightness)`` in pixels / intensity."""
        lo, hi = self.margin, self.size - 1 - self.margin
        s0, s1 = self.sigma_range
        b0, b1 = self.brightness_range
        scale = torch.tensor([hi - lo, hi - lo, s1 - s0, b1 - b0], dtype=f.dtype, device=f.device)
        shift = torch.tensor([lo, lo, s0, b0], dtype=f.dtype, device=f.device)
        return shift + scale * f

    def render(self, f: Tensor) -> Tensor:
        """Images ``(B, 1, size, size)`` of normalised factors ``(B, 4)``."""
        return render_blobs(self.physical(f), self.size)

    def forward(self, z: Tensor) -> Tensor:
        """``G(z)``: ``(B, 4) -> (B, 1, size, size)``."""
        return self.render(self.factors(z))

    def sample_codes(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        r"""``n`` latent codes :math:`z = M^{-1}(w)`, :math:`w_i \sim N(0, s_i^2)` independent."""
        w = torch.randn(int(n), 4, generator=generator) * self.spreads
        return self.unmix(w)

    def factor_directions(self, z: Tensor) -> Tensor:
        r"""The latent directions that move one factor alone: :math:`\partial z/\partial w_i = J_M(z)^{-1} e_i`.

        Returns ``(B, 4, 4)``: row ``i`` is the (unnormalised) direction of factor ``i`` at each ``z``.
        """
        jac = torch.func.vmap(torch.func.jacrev(lambda v: self.mix(v[None])[0]))(z)  # (B, w, z)
        return torch.linalg.inv(jac).transpose(1, 2)  # rows: columns of J^{-1}
