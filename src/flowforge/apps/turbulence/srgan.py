r"""A small super-resolution GAN decoder in the spirit of ZipGAN (Nista et al., arXiv:2412.14150; abstract-
inspired: no official code or architecture was found, see ``verified-discrete-science.md`` section 6).

The generator :math:`G` maps a stored field (box averages, ``(B, 1, m, m)``) to ``(B, 1, n, n)``: residual
blocks at the stored resolution, a pixel shuffle to the full grid, and a residual added to the spectral
(zero-padding) upsampling, all with periodic (circular) convolutions. The critic :math:`D` is a strided CNN
that sees a full-resolution field alone, so its logit is a **no-reference** quality score of a decoded
field (ZipGAN reuses its discriminator this way). The loss is

.. math:: L = \underbrace{\|G(y) - x\|_1}_{\text{content}} + \lambda\,\underbrace{\mathrm{sp}(-D(G(y)))}_{\text{adversarial}}
          + \underbrace{\mathrm{sp}(-D(x)) + \mathrm{sp}(D(\mathrm{sg}[G(y)]))}_{\text{critic}},

with :math:`\mathrm{sp}` the softplus (non-saturating GAN loss) and :math:`y` the stored field of the
truth :math:`x`. The generator's adversarial term is evaluated with a detached copy of the critic's
weights, so one scalar trains both players by simultaneous gradient steps (the trainer's one optimizer).

Example:
    >>> import torch
    >>> gan = SRGAN(factor=4, channels=8, blocks=1, head=4)
    >>> x = torch.randn(2, 1, 32, 32)
    >>> float(gan.loss(x).detach()) > 0, gan.decode(torch.randn(2, 1, 8, 8)).shape, gan.score(x).shape
    (True, torch.Size([2, 1, 32, 32]), torch.Size([2]))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from flowforge.apps.turbulence.compression import downsample, spectral_upsample

__all__ = ["SRGAN", "SRGenerator", "Critic"]


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, padding_mode="circular")


class _Res(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.a, self.b = _conv(c, c), _conv(c, c)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.b(F.leaky_relu(self.a(h), 0.2))


class SRGenerator(nn.Module):
    """``(B, 1, m, m) -> (B, 1, m f, m f)``: low-resolution residual blocks, pixel shuffle, spectral skip."""

    def __init__(self, factor: int, channels: int = 32, blocks: int = 4, head: int = 16) -> None:
        super().__init__()
        if factor < 2 or channels < 1 or blocks < 0 or head < 1:
            raise ValueError(
                f"need factor >= 2, channels, head >= 1, blocks >= 0; got {factor, channels, blocks, head}"
            )
        self.factor = int(factor)
        self.inp = _conv(1, channels)
        self.body = nn.Sequential(*[_Res(channels) for _ in range(blocks)])
        self.expand = _conv(channels, head * factor**2)
        self.fuse = _conv(head + 1, head)
        self.out = _conv(head, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, low: Tensor) -> Tensor:
        up = spectral_upsample(low, self.factor)
        h = self.body(F.leaky_relu(self.inp(low), 0.2))
        h = F.pixel_shuffle(self.expand(h), self.factor)
        h = F.leaky_relu(self.fuse(torch.cat([F.leaky_relu(h, 0.2), up], dim=1)), 0.2)
        return up + self.out(h)


class Critic(nn.Module):
    """Strided CNN ``(B, 1, n, n) -> (B,)`` logits ("how real does this field look")."""

    def __init__(self, channels: int = 16, depth: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 1
        for i in range(depth):
            cout = channels * min(2**i, 4)
            layers += [_conv(c, cout, stride=2), nn.LeakyReLU(0.2)]
            c = cout
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x).mean((-2, -1))).squeeze(-1)


class SRGAN(nn.Module):
    r"""Generator + critic trained together; fields are divided by ``scale`` inside.

    Args:
        factor: downsampling factor of the stored fields (compression ``factor**2``).
        scale: typical magnitude of the fields (e.g. the training vorticity's standard deviation).
        adv_weight: :math:`\lambda`, weight of the adversarial term against the L1 content term.
        content: ``"l1"`` or ``"l2"``.
        channels, blocks, head: generator widths; critic_channels: the critic's base width.
    """

    def __init__(
        self,
        factor: int,
        *,
        scale: float = 1.0,
        adv_weight: float = 0.01,
        content: str = "l1",
        channels: int = 32,
        blocks: int = 4,
        head: int = 16,
        critic_channels: int = 16,
    ) -> None:
        super().__init__()
        if content not in ("l1", "l2"):
            raise ValueError(f"content must be 'l1' or 'l2', got {content!r}")
        if adv_weight < 0 or scale <= 0:
            raise ValueError(
                f"need adv_weight >= 0 and scale > 0, got adv_weight={adv_weight}, scale={scale}"
            )
        self.factor, self.adv_weight, self.content = int(factor), float(adv_weight), content
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.gen = SRGenerator(factor, channels, blocks, head)
        self.critic = Critic(critic_channels)

    def loss(self, batch: Tensor) -> Tensor:
        """Content + adversarial + critic loss on full-resolution fields ``(B, 1, n, n)``; a scalar."""
        if not isinstance(batch, Tensor) or batch.dim() != 4 or batch.shape[1] != 1:
            raise ValueError("SRGAN.loss takes full-resolution fields (B, 1, n, n)")
        x = batch / self.scale
        fake = self.gen(downsample(x, self.factor))
        diff = fake - x
        content = diff.abs().mean() if self.content == "l1" else diff.square().mean()
        frozen = {k: v.detach() for k, v in self.critic.named_parameters()}
        g_adv = F.softplus(-functional_call(self.critic, frozen, (fake,))).mean()
        d_loss = F.softplus(-self.critic(x)).mean() + F.softplus(self.critic(fake.detach())).mean()
        return content + self.adv_weight * g_adv + d_loss

    @torch.no_grad()
    def decode(self, low: Tensor) -> Tensor:
        """Decode stored fields ``(B, 1, m, m)`` (data units) to ``(B, 1, m f, m f)``."""
        return self.gen(low / self.scale) * self.scale

    @torch.no_grad()
    def score(self, x: Tensor) -> Tensor:
        """The critic's no-reference score of fields ``(B, 1, n, n)`` (data units): higher looks more real."""
        return self.critic(x / self.scale)
