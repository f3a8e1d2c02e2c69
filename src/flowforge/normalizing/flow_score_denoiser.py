r"""Flow-score matching: a light causal denoiser trained on a flow's own score (STARFlow-V).

A flow trained on noise-augmented data :math:`\tilde x = x + \sigma\epsilon` models :math:`p_\sigma`, whose score
gives the posterior mean of the clean data (Tweedie): :math:`E[x \mid \tilde x] = \tilde x + \sigma^2
\nabla_{\tilde x}\log p_\sigma(\tilde x)`. The exact score needs a backward pass through the whole flow and,
for a video, depends on *future* frames (:math:`\log p(x_{>f} \mid x_{\le f})` involves :math:`x_f`), which
breaks streaming generation. STARFlow-V (Gu et al. 2025, "STARFlow-V", apple/ml-starflow) instead trains a
small causal network :math:`D_\phi` to regress the flow's score,

.. math::

    \mathcal L(\phi) = \mathbb E_{x, \epsilon}\,
        \big\| D_\phi(\tilde x) - \sigma \nabla_{\tilde x} \log p_\theta(\tilde x) \big\|^2,
    \qquad \hat x = \tilde x + \sigma D_\phi(\tilde x),

(the target :math:`\sigma \nabla\log p` has about unit scale, "std about 1 like diffusion"), with
:math:`D_\phi` causal over frames: frame ``f`` of the output reads frames ``<= f`` only, so a frame can be
denoised as soon as it is generated.

Here :math:`D_\phi` embeds each frame as one token (a linear map of the flattened frame plus a learned
frame position), runs a :class:`~flowforge.nn.transformer.CausalTransformer` over the frames and maps
each token back to a frame through a zero-initialised projection, plus a zero-initialised linear map of the
frame itself (the score of a Gaussian is linear, and the trunk's final layer norm cannot carry scale); it
starts as "no correction".

Example:
    >>> den = FlowScoreDenoiser(frames=4, frame_shape=(1, 2, 2), width=16, layers=1, head_dim=8, sigma=0.1)
    >>> x = torch.randn(3, 4, 1, 2, 2)
    >>> den(x).shape, torch.equal(den.denoise(x), x)  # zero-initialised: the identity
    (torch.Size([3, 4, 1, 2, 2]), True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from flowforge.nn.transformer import CausalTransformer

__all__ = ["FlowScoreDenoiser"]


class FlowScoreDenoiser(nn.Module):
    r"""A causal-over-frames network :math:`D_\phi(\tilde x) \approx \sigma\nabla\log p_\sigma(\tilde x)`.

    Args:
        frames: frames a video ``F``.
        frame_shape: shape of one frame, e.g. ``(C, H, W)`` or ``(D,)``.
        width: transformer width.
        layers: transformer depth.
        head_dim: channels per attention head.
        sigma: the noise level :math:`\sigma` of the flow's training data.

    Call ``den(x)`` on videos ``(B, F, *frame)``; the output has the same shape.
    """

    def __init__(
        self,
        frames: int,
        frame_shape: Sequence[int],
        width: int = 64,
        layers: int = 2,
        *,
        head_dim: int = 32,
        sigma: float = 0.1,
    ) -> None:
        super().__init__()
        if frames < 1 or width < 1 or layers < 1:
            raise ValueError(
                f"FlowScoreDenoiser needs frames, width, layers >= 1; got {frames}, {width}, {layers}"
            )
        if sigma <= 0:
            raise ValueError(
                f"the flow-score denoiser needs the flow's training noise sigma > 0, got {sigma}; "
                "train the flow with noise_std > 0"
            )
        self.frames, self.frame_shape = int(frames), tuple(int(s) for s in frame_shape)
        self.frame_dim, self.sigma = math.prod(self.frame_shape), float(sigma)
        self.inp = nn.Linear(self.frame_dim, width)
        self.pos = nn.Parameter(torch.randn(self.frames, width) * 1e-2)
        self.trunk = CausalTransformer(width, layers, head_dim=head_dim)
        self.out = nn.Linear(width, self.frame_dim)
        self.skip = nn.Linear(self.frame_dim, self.frame_dim, bias=False)  # the Gaussian part of the score
        for lin in (self.out, self.skip):
            nn.init.zeros_(lin.weight)
        nn.init.zeros_(self.out.bias)

    def _check(self, x: Tensor) -> None:
        if x.dim() < 2 or tuple(x.shape[1:]) != (self.frames, *self.frame_shape):
            raise ValueError(
                f"FlowScoreDenoiser expects videos (B, {self.frames}, {', '.join(map(str, self.frame_shape))}), "
                f"got {tuple(x.shape)}"
            )

    def forward(self, x: Tensor) -> Tensor:
        r"""Predicted :math:`\sigma\nabla\log p_\sigma(x)`, ``(B, F, *frame)``; frame ``f`` reads frames ``<= f``."""
        self._check(x)
        b = x.shape[0]
        flat = x.reshape(b, self.frames, self.frame_dim)
        h = self.inp(flat) + self.pos
        return (self.out(self.trunk(h)) + self.skip(flat)).reshape(x.shape)

    def loss(self, x_noisy: Tensor, scaled_score: Tensor) -> Tensor:
        r"""Flow-score matching: mean squared error to the target :math:`\sigma\nabla\log p_\theta(\tilde x)`."""
        if scaled_score.shape != x_noisy.shape:
            raise ValueError(
                f"the score target {tuple(scaled_score.shape)} must have the shape of the videos "
                f"{tuple(x_noisy.shape)}"
            )
        return (self(x_noisy) - scaled_score.detach()).square().mean()

    def denoise(self, x: Tensor) -> Tensor:
        r"""Tweedie with the learned score: :math:`\hat x = x + \sigma D_\phi(x)`, ``(B, F, *frame)``."""
        return x + self.sigma * self(x)
