r"""Glow (Kingma & Dhariwal, 2018, "Glow: Generative Flow with Invertible 1x1 Convolutions", arXiv:1807.03039).

Image bijections on ``(B, C, H, W)`` and the multiscale :class:`Glow` built from them. One *step of
flow* (paper Sec. 3, Table 1) is :class:`ActNorm2d` -> :class:`InvConv2d` -> :class:`AffineCoupling2d`;
a *level* is a :class:`Squeeze` followed by ``K`` steps; after every level but the last, half of the
channels are factored out to the latent (paper Fig. 2b, Dinh et al. 2017's multiscale architecture).

Every layer maps data to noise (DESIGN.md): ``forward(x, **cond) -> (z, ladj)`` with
``ladj = log|det dz/dx|`` of shape ``(B,)``, and ``inverse(z, **cond) -> (x, ladj)`` with
``ladj = log|det dx/dz|``. Conditioning keywords are accepted and ignored.

Images are the dequantised pixels of TARFlow's image recipes (:mod:`flowforge.normalizing.tarflow`,
``flowforge.data.dequantize``): integers ``x`` in ``[0, L)`` become ``2 (x + u) / L - 1`` in ``[-1, 1]``
(the official Glow code uses ``[-1/2, 1/2]``, a constant shift of ``D log 2`` nats in ``log p``).
:meth:`Glow.bits_per_dim` reports bits per pixel-scale dimension of such inputs.

Example:
    >>> flow = Glow(image_shape=(1, 4, 4), levels=2, steps=1, hidden=8)
    >>> x = torch.rand(3, 1, 4, 4) * 2 - 1
    >>> z, ladj = flow(x)
    >>> z.shape, ladj.shape
    (torch.Size([3, 1, 4, 4]), torch.Size([3]))
    >>> torch.allclose(flow.inverse(z)[0], x, atol=1e-5)
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, final

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowforge.core.batch import split_batch
from flowforge.normalizing.flow import Compose, Flow

__all__ = ["ActNorm2d", "AffineCoupling2d", "Glow", "InvConv2d", "Squeeze"]

#: the official code's scale is ``sigmoid(raw + 2)``: close to 1 (0.88) at the zero-initialised start
_SCALE_SHIFT = 2.0


def _check_images(x: Tensor, channels: int | None, who: str) -> None:
    """Raise a ValueError naming ``who`` unless ``x`` is ``(B, channels, H, W)`` (``None``: any ``C``)."""
    if not isinstance(x, Tensor) or x.dim() != 4:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(
            f"{who} expects images of shape (B, C, H, W), got {got}; reshape with x.view(B, C, H, W), "
            "or use the vector layers (ActNorm, LULinear, AffineCoupling) for (B, D) points"
        )
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"{who} expects images of shape (B, {channels}, H, W), got {tuple(x.shape)}; "
            f"build the layer with channels={x.shape[1]}"
        )


def _check_channels(channels: int, who: str, least: int = 1) -> int:
    if int(channels) != channels or channels < least:
        raise ValueError(f"{who}: channels must be an integer >= {least}, got {channels!r}")
    return int(channels)


@final
class ActNorm2d(nn.Module):
    r"""Activation normalisation per channel (Glow Sec. 3.1): :math:`z = (x - \mu_c)\, e^{-\log\sigma_c}`.

    In the paper's symbols :math:`z = s \odot (x + b)` with :math:`s = e^{-\log\sigma}`, :math:`b = -\mu`,
    so ``ladj = H W sum_c log|s_c| = -H W sum_c log_scale_c`` (paper Table 1). On the first
    ``forward`` in training mode the parameters are set from the batch so that ``z`` has zero mean
    and unit variance per channel over ``(B, H, W)`` (data-dependent initialisation). Whether this
    happened is the persistent buffer ``initialized``, so a loaded ``state_dict`` is never
    re-initialised. Until then the layer is the identity.

    Args:
        channels: ``C``.
        eps: added to the batch std at initialisation.

    Example:
        >>> layer = ActNorm2d(2)
        >>> z, ladj = layer(torch.randn(8, 2, 4, 4) * 3 + 1)
        >>> bool(z.mean((0, 2, 3)).abs().max() < 1e-5), ladj.shape
        (True, torch.Size([8]))
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.channels, self.eps = _check_channels(channels, "ActNorm2d"), eps
        self.loc = nn.Parameter(torch.zeros(self.channels))
        self.log_scale = nn.Parameter(torch.zeros(self.channels))
        self.register_buffer("initialized", torch.tensor(False))

    def _ladj(self, x: Tensor) -> Tensor:
        return (x.shape[2] * x.shape[3] * self.log_scale.sum()).expand(x.shape[0])

    def forward(self, x: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        _check_images(x, self.channels, "ActNorm2d")
        if self.training and not bool(self.initialized) and x[:, 0].numel() >= 2:
            with torch.no_grad():
                xd = x.detach().transpose(0, 1).flatten(1)  # (C, B H W)
                self.loc.copy_(xd.mean(1))
                self.log_scale.copy_(torch.log(xd.std(1, correction=0) + self.eps))
                self.initialized.fill_(True)
        z = (x - self.loc[:, None, None]) * torch.exp(-self.log_scale)[:, None, None]
        return z, -self._ladj(x)

    def inverse(self, z: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        _check_images(z, self.channels, "ActNorm2d")
        x = z * torch.exp(self.log_scale)[:, None, None] + self.loc[:, None, None]
        return x, self._ladj(z)

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


@final
class InvConv2d(nn.Module):
    r"""Invertible 1x1 convolution in LU form (Glow Sec. 3.2): :math:`z_{:,h,w} = W x_{:,h,w}`.

    :math:`W = P L (U + \mathrm{diag}(\mathrm{sign}(s)\, e^{\log|s|}))` with ``P`` a fixed permutation,
    ``L`` unit lower-triangular, ``U`` strictly upper-triangular and ``sign(s)`` fixed (buffers), ``L``,
    ``U`` and ``log|s|`` learned, so :math:`\log|\det \partial z/\partial x| = H W \sum \log|s|`
    (paper Eq. 10). As in the paper, ``W`` starts as a random rotation (``log|det W| = 0``), drawn
    from ``seed`` or ``generator`` (torch's default generator with neither); ``P`` and ``sign(s)``
    are buffers, so a loaded ``state_dict`` restores them whatever the fresh instance drew.

    Args:
        channels: ``C``.
        seed, generator: where the initial rotation comes from (give at most one).

    Example:
        >>> conv = InvConv2d(3, seed=0)
        >>> x = torch.randn(2, 3, 4, 4)
        >>> z, ladj = conv(x)
        >>> torch.allclose(conv.inverse(z)[0], x, atol=1e-5), bool(ladj.abs().max() < 1e-4)
        (True, True)
    """

    def __init__(
        self, channels: int, *, seed: int | None = None, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        self.channels = _check_channels(channels, "InvConv2d")
        if seed is not None and generator is not None:
            raise ValueError("InvConv2d takes seed= or generator=, not both")
        if seed is not None:
            generator = torch.Generator().manual_seed(seed)
        c = self.channels
        q, _ = torch.linalg.qr(torch.randn(c, c, generator=generator, dtype=torch.float64))
        p, lower, upper = torch.linalg.lu(q)
        s = torch.diagonal(upper)
        self.register_buffer("perm", p.float())
        self.register_buffer("sign_s", torch.sign(s).float())
        self.lower = nn.Parameter(lower.tril(-1).float())
        self.upper = nn.Parameter(upper.triu(1).float())
        self.log_s = nn.Parameter(s.abs().log().float())

    def _factors(self) -> tuple[Tensor, Tensor]:
        eye = torch.eye(self.channels, dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower.tril(-1) + eye
        upper = self.upper.triu(1) + torch.diag(self.sign_s * torch.exp(self.log_s))
        return lower, upper

    def weight(self) -> Tensor:
        """The ``(C, C)`` matrix ``W = P L U``."""
        lower, upper = self._factors()
        return self.perm @ lower @ upper

    def _ladj(self, x: Tensor) -> Tensor:
        return (x.shape[2] * x.shape[3] * self.log_s.sum()).expand(x.shape[0])

    def forward(self, x: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        _check_images(x, self.channels, "InvConv2d")
        return F.conv2d(x, self.weight()[:, :, None, None]), self._ladj(x)

    def inverse(self, z: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        _check_images(z, self.channels, "InvConv2d")
        b, c, h, w = z.shape
        lower, upper = self._factors()
        r = self.perm.T @ z.transpose(0, 1).reshape(c, -1)  # (C, B H W); P^{-1} = P^T
        r = torch.linalg.solve_triangular(lower, r, upper=False, unitriangular=True)
        r = torch.linalg.solve_triangular(upper, r, upper=True)
        return r.reshape(c, b, h, w).transpose(0, 1), -self._ladj(z)

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


@final
class AffineCoupling2d(nn.Module):
    r"""Affine coupling on channels (Glow Sec. 3.3, after RealNVP; Dinh et al. 2017).

    ``x = (x_a, x_b)`` split along channels (``x_a`` the first ``C // 2``); a conv net
    ``NN(x_a) = (t, raw)`` gives, per pixel and channel of ``x_b``,
    :math:`z_b = (x_b + t)\, s` with :math:`s = \sigma(\mathrm{raw} + 2)` (the official code's scale;
    the paper's Table 1 writes ``exp``), :math:`z_a = x_a`, ``ladj = sum log s`` over ``(C_b, H, W)``.
    The net is conv 3x3 -> ReLU -> conv 1x1 -> ReLU -> conv 3x3, the last one zero-initialised
    (paper Sec. 3.3), so at the start ``t = 0`` and ``s = sigmoid(2)``.

    Args:
        channels: ``C >= 2``.
        hidden: channels of the conv net's hidden layers (512 in the paper).

    Example:
        >>> layer = AffineCoupling2d(4, hidden=8)
        >>> x = torch.randn(2, 4, 3, 3)
        >>> z, ladj = layer(x)
        >>> torch.equal(z[:, :2], x[:, :2]), torch.allclose(layer.inverse(z)[0], x, atol=1e-6)
        (True, True)
    """

    def __init__(self, channels: int, hidden: int = 512) -> None:
        super().__init__()
        self.channels = _check_channels(channels, "AffineCoupling2d (one half conditions the other)", 2)
        self.hidden = _check_channels(hidden, "AffineCoupling2d hidden", 1)
        ca = self.channels // 2
        cb = self.channels - ca
        last = nn.Conv2d(self.hidden, 2 * cb, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(
            nn.Conv2d(ca, self.hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(self.hidden, self.hidden, 1),
            nn.ReLU(),
            last,
        )

    def _params(self, xa: Tensor) -> tuple[Tensor, Tensor]:
        h = self.net(xa)
        shift, raw = h[:, 0::2], h[:, 1::2]  # interleaved, as in the official code
        return shift, F.logsigmoid(raw + _SCALE_SHIFT)

    def forward(self, x: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        _check_images(x, self.channels, "AffineCoupling2d")
        ca = self.channels // 2
        xa, xb = x[:, :ca], x[:, ca:]
        shift, log_s = self._params(xa)
        return torch.cat([xa, (xb + shift) * torch.exp(log_s)], 1), log_s.flatten(1).sum(1)

    def inverse(self, z: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        _check_images(z, self.channels, "AffineCoupling2d")
        ca = self.channels // 2
        za, zb = z[:, :ca], z[:, ca:]
        shift, log_s = self._params(za)
        return torch.cat([za, zb * torch.exp(-log_s) - shift], 1), -log_s.flatten(1).sum(1)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, hidden={self.hidden}"


@final
class Squeeze(nn.Module):
    """Space-to-depth: ``(B, C, H, W) -> (B, 4 C, H / 2, W / 2)``, each 2x2 patch to channels; ``ladj = 0``.

    Channel ``4 c + 2 i + j`` of the output holds pixel ``(2 h + i, 2 w + j)`` of input channel ``c``
    (the official Glow code's ``squeeze2d`` order). ``H`` and ``W`` must be even.

    Example:
        >>> z, ladj = Squeeze()(torch.arange(4.0).view(1, 1, 2, 2))
        >>> z.flatten().tolist(), z.shape, float(ladj[0])
        ([0.0, 1.0, 2.0, 3.0], torch.Size([1, 4, 1, 1]), 0.0)
    """

    def forward(self, x: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        _check_images(x, None, "Squeeze")
        b, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(
                f"Squeeze needs even H and W, got {h}x{w} (images {tuple(x.shape)}); pad or crop the "
                "images to an even size, or build Glow with fewer levels"
            )
        z = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return z.reshape(b, 4 * c, h // 2, w // 2), x.new_zeros(b)

    def inverse(self, z: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        _check_images(z, None, "Squeeze.inverse")
        b, c4, h, w = z.shape
        if c4 % 4:
            raise ValueError(
                f"Squeeze.inverse needs a channel count divisible by 4, got {c4} (images {tuple(z.shape)})"
            )
        x = z.reshape(b, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        return x.reshape(b, c4 // 4, 2 * h, 2 * w), z.new_zeros(b)


class _MultiScale(nn.Module):
    """Levels of ``Compose([Squeeze, K steps])``; after each level but the last the second half of the
    channels is factored out. The latents are flattened, concatenated in the order they leave
    (level 0 first, the last level's output last) and reshaped to the input's ``(C, H, W)``."""

    def __init__(self, levels: Sequence[nn.Module], image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.levels = nn.ModuleList(levels)
        self.image_shape = image_shape
        c, h, w = image_shape
        shapes: list[tuple[int, int, int]] = []  # shape of each factored-out latent, then the final one
        for i in range(len(levels)):
            c, h, w = 4 * c, h // 2, w // 2
            if i < len(levels) - 1:
                shapes.append((c - c // 2, h, w))
                c = c // 2
        shapes.append((c, h, w))
        self.latent_shapes = shapes

    def forward(self, x: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        ladj = x.new_zeros(x.shape[0])
        out: list[Tensor] = []
        for i, level in enumerate(self.levels):
            x, l = level(x, **cond)
            ladj = ladj + l
            if i < len(self.levels) - 1:
                keep = x.shape[1] // 2
                out.append(x[:, keep:].flatten(1))  # factored out (the paper's z_2)
                x = x[:, :keep]
        out.append(x.flatten(1))
        return torch.cat(out, 1).reshape(x.shape[0], *self.image_shape), ladj

    def inverse(self, z: Tensor, **cond: Tensor) -> tuple[Tensor, Tensor]:
        b = z.shape[0]
        flat = z.reshape(b, -1)
        pieces = torch.split(flat, [math.prod(s) for s in self.latent_shapes], 1)
        parts = [p.reshape(b, *s) for p, s in zip(pieces, self.latent_shapes)]
        ladj = z.new_zeros(b)
        x = parts[-1]
        for i in reversed(range(len(self.levels))):
            if i < len(self.levels) - 1:
                x = torch.cat([x, parts[i]], 1)
            x, l = self.levels[i].inverse(x, **cond)
            ladj = ladj + l
        return x, ladj


class Glow(Flow):
    r"""Glow (Kingma & Dhariwal, 2018): a multiscale flow of ActNorm, invertible 1x1 conv and coupling.

    Data to noise, level ``l = 1..L``: :class:`Squeeze`, then ``K`` steps
    ``ActNorm2d -> InvConv2d -> AffineCoupling2d``; after every level but the last, the second half of
    the channels leaves as a latent and the first half goes on (paper Fig. 2b). ``forward`` returns
    all latents flattened, concatenated in the order they leave and reshaped to ``(B, C, H, W)``
    (a fixed relabelling, ``ladj`` unchanged). The base is a standard normal on these concatenated
    latents; the paper's learned prior for the factored-out half (a conv of the kept half gives its
    mean and log-std) is not included.

    ``loss`` is the mean negative log-likelihood in **nats per dimension** (like
    :class:`~flowforge.normalizing.tarflow.TARFlow`); :meth:`bits_per_dim` gives bits per dimension
    on the pixel scale of dequantised images.

    Args:
        image_shape: ``(C, H, W)``; ``H`` and ``W`` divisible by ``2**levels``.
        levels: ``L`` (3 in the paper's CIFAR-10 model).
        steps: ``K`` steps of flow per level (32 in the paper).
        hidden: channels of the coupling nets (512 in the paper).
        seed: seed of the 1x1 convolutions' initial rotations (torch's default generator if None).

    Example:
        >>> flow = Glow(image_shape=(1, 8, 8), levels=2, steps=2, hidden=8, seed=0)
        >>> x = torch.rand(4, 1, 8, 8) * 2 - 1
        >>> flow.log_prob(x).shape, flow.bits_per_dim(x, levels=17).shape
        (torch.Size([4]), torch.Size([4]))
        >>> flow.sample(2, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([2, 1, 8, 8])
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        levels: int = 3,
        steps: int = 32,
        hidden: int = 512,
        *,
        seed: int | None = None,
    ) -> None:
        shape = tuple(int(s) for s in image_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(
                f"Glow: image_shape must be (C, H, W) of positive sizes, got {tuple(image_shape)}"
            )
        for name, v in (("levels", levels), ("steps", steps), ("hidden", hidden)):
            if int(v) != v or v < 1:
                raise ValueError(f"Glow: {name} must be a positive integer, got {v!r}")
        c, h, w = shape
        if h % 2**levels or w % 2**levels:
            most = 0
            while h % 2 ** (most + 1) == 0 and w % 2 ** (most + 1) == 0:
                most += 1
            raise ValueError(
                f"Glow: image size {h}x{w} is not divisible by 2**levels = {2**levels} (each level squeezes "
                f"by 2); use levels <= {most}, or pad the images"
            )
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        stack: list[nn.Module] = []
        ch = c
        for i in range(levels):
            ch *= 4
            layers: list[nn.Module] = [Squeeze()]
            for _ in range(steps):
                layers += [ActNorm2d(ch), InvConv2d(ch, generator=g), AffineCoupling2d(ch, hidden)]
            stack.append(Compose(layers))
            if i < levels - 1:
                ch //= 2
        super().__init__(_MultiScale(stack, shape), event_shape=shape)
        self.image_shape, self.levels, self.steps, self.hidden = shape, int(levels), int(steps), int(hidden)

    def bits_per_dim(self, x: Tensor, levels: int = 256, **cond: Tensor) -> Tensor:
        r"""Bits per dimension on the pixel scale, ``(B, C, H, W) -> (B,)``.

        ``x`` are dequantised images in ``[-1, 1]`` as ``flowforge.data.dequantize`` makes them
        (``2 (x + u) / L - 1``, the convention of the TARFlow recipes). The map from pixel units
        ``[0, L)`` to the model's inputs has ``log|det| = D log(2 / L)``
        (``flowforge.data.dequantization_log_det``), so
        :math:`\mathrm{bpd} = -(\log p(x) + D \log(2/L)) / (D \ln 2)`, the same number that the image
        recipes report (an upper bound of the discrete bits per dimension, averaged over ``u``).
        """
        d = math.prod(self.event_shape)
        return -(self.log_prob(x, **cond) + d * math.log(2.0 / levels)) / (d * math.log(2.0))

    def loss(self, batch: Any) -> Tensor:
        """Mean negative log-likelihood in nats per dimension over ``x``, ``(x, y)`` or a dict batch."""
        x, cond = split_batch(batch)
        return -(self.log_prob(x, **cond) / math.prod(self.event_shape)).mean()

    def generator(self) -> Glow:
        return self
