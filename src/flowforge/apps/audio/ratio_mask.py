r"""The discriminative baseline of language-queried separation: a ratio mask regressed from mixture + query.

A :class:`~flowforge.nn.UNet` (called at ``t = 0``; its time input is unused) reads the mixture's
log-magnitude spectrogram, pixel-unshuffled into ``patch x patch`` cells (``(patch^2, 64/patch, 64/patch)``,
the grid of the latent flow's UNet for ``patch = 4``), and the query embedding (broadcast planes), and
outputs a mask
:math:`M = \sigma(\mathrm{net}) \in [0, 1]^{F \times T}`; the estimate is :math:`M \odot |Y|` with the
mixture's phase (LASS-Net, Liu et al. 2022, arXiv:2203.15147, in miniature). The loss is the squared error
of the masked magnitude, relative to the mixture's energy,

.. math:: \mathcal L = \frac{\lVert M \odot |Y| - |S| \rVert^2}{\lVert Y \rVert^2}.

:func:`ideal_ratio_mask` :math:`|S| / (|S| + |N|)` is the oracle control.

Example:
    >>> import torch
    >>> from flowforge.apps.audio import make_mixtures, random_queries
    >>> sep = RatioMaskSeparator(channels=8, mults=(1,), query_dim=4, patch=2)
    >>> d = make_mixtures(2, seed=0)
    >>> q = random_queries(d["target_class"], "class", generator=torch.Generator().manual_seed(0))
    >>> float(sep.loss((d["source"], d["mixture"], q)).detach()) > 0
    True
    >>> sep.separate(d["mixture"], q).shape
    torch.Size([2, 3969])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowforge.apps.audio.latent_flow import SPEC_SIZE, decode_waveform, spectrogram_features, unpack_batch
from flowforge.apps.audio.queries import BagOfWords, QueryTokenizer
from flowforge.apps.audio.spectral import stft, with_phase
from flowforge.nn import UNet

__all__ = ["RatioMaskSeparator", "ideal_ratio_mask", "oracle_separation"]


def ideal_ratio_mask(source_spec: Tensor, interferer_spec: Tensor, *, eps: float = 1e-8) -> Tensor:
    """IRM :math:`|S| / (|S| + |N|)` ``(B, F, T)`` from the complex STFTs of target and interferer."""
    a, b = source_spec.abs(), interferer_spec.abs()
    return a / (a + b).clamp_min(eps)


def oracle_separation(source: Tensor, interferer: Tensor) -> Tensor:
    """The IRM applied to the mixture ``source + interferer``, with the mixture's phase, ``(B, L)``."""
    s, n = stft(source), stft(interferer)
    y = s + n
    return with_phase(ideal_ratio_mask(s, n) * y.abs(), y, source.shape[-1])


class RatioMaskSeparator(nn.Module):
    """Query-conditioned ratio-mask regressor on the mixture's spectrogram.

    Args:
        channels, mults, blocks, attention: the UNet's layout (on ``patch^2 x 64/patch x 64/patch`` cells).
        query_dim: dimension of the bag-of-words query embedding.
        patch: pixel-unshuffle factor (1, 2, 4, ...; divides 64).
    """

    def __init__(
        self,
        *,
        channels: int = 16,
        mults: Sequence[int] = (1, 2),
        blocks: int = 1,
        attention: Sequence[int] = (),
        query_dim: int = 16,
        patch: int = 4,
    ) -> None:
        super().__init__()
        if patch < 1 or SPEC_SIZE % patch:
            raise ValueError(f"patch must divide {SPEC_SIZE}, got {patch}; use 1, 2, 4 or 8")
        self.patch = int(patch)
        self.query = BagOfWords(QueryTokenizer().vocab_size, query_dim)
        self.net = UNet(
            in_channels=patch * patch,
            channels=channels,
            mults=mults,
            blocks=blocks,
            attention=attention,
            extra_channels=query_dim,
            groups=min(8, channels),
        )

    def mask(self, f_mix: Tensor, ids: Tensor) -> Tensor:
        """Mask ``(B, F, T)`` in ``[0, 1]`` from mixture features ``(B, 1, F, T)`` and query ids ``(B, W)``."""
        x = F.pixel_unshuffle(f_mix, self.patch)
        q = self.query(ids)[:, :, None, None].expand(-1, -1, *x.shape[-2:])
        t = torch.zeros(f_mix.shape[0], dtype=f_mix.dtype, device=f_mix.device)
        return torch.sigmoid(F.pixel_shuffle(self.net(x, t, extra=q.to(x.dtype)), self.patch))[:, 0]

    def loss(self, batch: Any) -> Tensor:
        """Squared error of the masked mixture magnitude against the target's, over the mixture's energy."""
        src, mix, ids = unpack_batch(batch)
        f_mix, spec = spectrogram_features(mix)
        target = stft(src).abs()
        y = spec.abs()
        err = (self.mask(f_mix, ids) * y - target).square().flatten(1).sum(1)
        return (err / y.square().flatten(1).sum(1).clamp_min(1e-8)).mean()

    @torch.no_grad()
    def separate(
        self, mixture: Tensor, query_ids: Tensor, *, phase: str = "mixture", gl_iters: int = 32, **_: Any
    ) -> Tensor:
        """The queried source, waveforms ``(B, L)``, from mixtures ``(B, L)`` and query ids ``(B, W)``."""
        f_mix, spec = spectrogram_features(mixture)
        was = self.training
        self.eval()
        mag = self.mask(f_mix, query_ids) * spec.abs()
        self.train(was)
        return decode_waveform(mag, spec, mixture.shape[-1], phase, gl_iters)
