r"""Generative models in a frozen autoencoder's latent space: latent flow matching and latent TARFlow.

:class:`LatentModel` wraps an inner model of any family (a :class:`~flowforge.continuous.FlowMatching`,
a :class:`~flowforge.normalizing.TARFlow`, anything with ``loss(batch)`` and ``generator(...)``)
around a frozen autoencoder with ``encode(x) -> (mean, logvar)`` and ``decode(z)``. Training encodes
the images and standardises the latents,

.. math:: z = (\mu(x) - s) / c,

with a shift :math:`s` and a scale :math:`c` per latent channel (or one number for all, like Stable
Diffusion's :math:`c = 1/0.18215`, :math:`s = 0`) measured by :func:`latent_stats`; sampling draws
``z`` from the inner model and decodes :math:`D(c z + s)`. This is latent flow matching (LFM; Dao et al.
2023, arXiv:2307.08698, on top of LDM, Rombach et al. 2022) with a flow-matching inner model, and
STARFlow (Gu et al. 2025) with a TARFlow on latents: STARFlow's noise augmentation in latent space is
the inner TARFlow's ``noise_std`` (0.3 in STARFlow) and its score-based denoising step runs on the
latents before decoding. STARFlow's optional decoder fine-tuning on noisy latents is not done here.

Conditions travel unchanged: ``(x, y)`` trains on ``(z, y)``, ``{"x": x, **cond}`` on
``{"x": z, **cond}``. Spatial conditions must already live on the latent grid (LFM's inpainting
condition is ``[encode(masked image), mask resized to the latent grid]``; :meth:`LatentModel.encode`
gives the first part).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from flowforge.core.batch import split_batch
from flowforge.latent.latent_flow_loss import latent_flow_matching_loss

__all__ = ["LatentModel", "LatentGenerator", "latent_stats"]


@torch.no_grad()
def latent_stats(
    autoencoder: nn.Module, images: Tensor, batch_size: int = 256, *, per_channel: bool = True
) -> tuple[Tensor, Tensor]:
    """Shift and scale that standardise an autoencoder's posterior means: ``(mean - shift) / scale``.

    Args:
        autoencoder: has ``encode(x) -> (mean, logvar)`` with ``mean: (B, C_z, h, w)``.
        images: ``(N, C, H, W)`` in ``[-1, 1]`` (a few thousand are plenty).
        batch_size: images encoded at a time.
        per_channel: one shift and scale per latent channel; False: one number for all (like Stable
            Diffusion's 0.18215 scale factor, here with the mean as shift).

    Returns:
        ``(shift, scale)``, each ``(C_z,)`` (per channel) or ``(1,)``, in the images' dtype.

    Example:
        >>> from flowforge.latent import KLAutoencoder
        >>> ae = KLAutoencoder(image_size=8, channels=(8, 16))
        >>> shift, scale = latent_stats(ae, torch.rand(32, 1, 8, 8) * 2 - 1)
        >>> shift.shape, bool((scale > 0).all())
        (torch.Size([4]), True)
    """
    if images.dim() != 4 or len(images) < 2:
        raise ValueError(f"latent_stats needs images (N >= 2, C, H, W), got shape {tuple(images.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    was_training = autoencoder.training
    autoencoder.eval()
    try:
        p = next(autoencoder.parameters())
        means = [
            autoencoder.encode(images[i : i + batch_size].to(device=p.device, dtype=p.dtype))[0].double()
            for i in range(0, len(images), batch_size)
        ]
    finally:
        autoencoder.train(was_training)
    m = torch.cat(means)
    flat = m.transpose(0, 1).flatten(1) if per_channel else m.reshape(1, -1)
    shift, scale = flat.mean(1), flat.std(1)
    if not bool((scale > 0).all()):
        raise ValueError("a latent channel is constant on these images; train the autoencoder first")
    return shift.to(images.dtype), scale.to(images.dtype)


def _accepts(fn: Any, name: str) -> bool:
    """Whether ``fn`` names the keyword ``name`` in its signature (not merely through ``**kwargs``)."""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


class LatentGenerator:
    """Samples latents from an inner generator, un-standardises and decodes them to images.

    Made by :meth:`LatentModel.generator`; ``sample(n, *, cond=None, generator=None, **opts)`` passes
    the options to the inner generator's ``sample`` (``solver``, ``steps`` for flow matching;
    ``method``, ``guidance`` for TARFlow).
    """

    def __init__(self, inner: Any, model: LatentModel) -> None:
        self.inner, self.model = inner, model

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        cond: dict[str, Tensor] | None = None,
        generator: torch.Generator | None = None,
        **opts: Any,
    ) -> Tensor | tuple[Tensor, ...]:
        """``n`` images ``(n, C, H, W)`` in ``[-1, 1]``.

        ``device`` and ``dtype`` default to those of the inner model where the inner ``sample`` takes
        them. When the inner generator returns a tuple (e.g. ``return_trajectory=True``), its first
        entry is decoded and the rest (latent-space trajectories) is returned as is.
        """
        fn = self.inner.sample
        p = next(self.model.inner.parameters(), None)
        if p is not None:
            if _accepts(fn, "device"):
                opts.setdefault("device", p.device)
            if _accepts(fn, "dtype") and p.is_floating_point():
                opts.setdefault("dtype", p.dtype)
        out = fn(n, cond=cond, generator=generator, **opts)
        if isinstance(out, tuple):
            return (self.model.decode(out[0]), *out[1:])
        return self.model.decode(out)


class LatentModel(nn.Module):
    r"""An inner generative model trained on a frozen autoencoder's standardised latents.

    The autoencoder is frozen (``requires_grad_(False)``, kept in eval mode even under ``train()``,
    encoding under ``no_grad``), so an optimizer built from the parameters that require gradients
    sees exactly the inner model's. Its weights stay in this module's ``state_dict`` (under
    ``autoencoder.``), with ``shift`` and ``scale`` as buffers of shape ``(latent_channels,)``: a saved
    run is self-contained.

    Args:
        inner: the model on latents ``(B, *latent_shape)``: ``loss(batch)`` and ``generator(**opts)``
            returning something with ``sample(n, *, cond, generator, **opts)``.
        autoencoder: ``encode(x) -> (mean, logvar)``, ``decode(z) -> x`` and ``latent_channels``
            (e.g. a trained :class:`~flowforge.latent.KLAutoencoder`).
        shift: :math:`s`, a number or ``(latent_channels,)`` (from :func:`latent_stats`).
        scale: :math:`c`, likewise (positive).
        sample_posterior: train on posterior samples ``mean + sigma * eps`` (global generator) instead
            of the posterior means.
        spatial_weight: importance of each latent position, ``u -> (B, *grid)`` (>= 0) of the raw
            (un-standardised) latents ``u: (B, C, *grid)``, e.g. ``0.1 + occupancy(u)``; weights the
            flow-matching loss per position (normalised to mean 1 per sample, see
            :func:`~flowforge.latent.latent_flow_matching_loss`). Needs a FlowMatching inner model.
        decoder_loss: :math:`\lambda` of a decoder-space loss: squared error between the decoded data
            prediction :math:`D(c \hat z_1 + s)` and the decoded latent :math:`D(c z_1 + s)` (0: off).
        decoder_features: a feature map :math:`\phi` applied to both decoded outputs (a perceptual
            substitute); ``None``: the decoder's output space itself.

    Example:
        >>> from flowforge import FlowMatching
        >>> from flowforge.latent import KLAutoencoder, latent_stats
        >>> from flowforge.nn import MLP
        >>> ae = KLAutoencoder(image_size=8, channels=(8, 16))
        >>> x = torch.rand(16, 1, 8, 8) * 2 - 1
        >>> shift, scale = latent_stats(ae, x)
        >>> lm = LatentModel(FlowMatching(MLP(dim=ae.latent_shape, width=32, depth=2)), ae,
        ...                  shift=shift, scale=scale)
        >>> lm.loss(x).ndim
        0
        >>> lm.generator().sample(3, steps=2, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([3, 1, 8, 8])
    """

    def __init__(
        self,
        inner: nn.Module,
        autoencoder: nn.Module,
        *,
        shift: float | Tensor,
        scale: float | Tensor,
        sample_posterior: bool = False,
        spatial_weight: Callable[[Tensor], Tensor] | None = None,
        decoder_loss: float = 0.0,
        decoder_features: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__()
        for name in ("encode", "decode"):
            if not callable(getattr(autoencoder, name, None)):
                raise TypeError(f"the autoencoder needs an {name}() method; pass e.g. a KLAutoencoder")
        if not callable(getattr(inner, "loss", None)) or not callable(getattr(inner, "generator", None)):
            raise TypeError(
                f"the inner model ({type(inner).__name__}) needs loss(batch) and generator(); "
                "pass e.g. a FlowMatching or a TARFlow"
            )
        c = int(getattr(autoencoder, "latent_channels", 0))
        if c < 1:
            raise TypeError("the autoencoder needs a latent_channels attribute (channels of its latents)")
        self.inner = inner
        self.autoencoder = autoencoder
        self.autoencoder.requires_grad_(False)
        self.autoencoder.eval()
        self.sample_posterior = bool(sample_posterior)
        if decoder_loss < 0:
            raise ValueError(f"decoder_loss must be >= 0 (0: off), got {decoder_loss}")
        if spatial_weight is not None and not callable(spatial_weight):
            raise TypeError(
                "spatial_weight must be a function of the raw latents (B, C, *grid) -> (B, *grid)"
            )
        self.spatial_weight = spatial_weight
        self.decoder_loss = float(decoder_loss)
        self.decoder_features = decoder_features
        self.register_buffer("shift", self._per_channel(shift, c, "shift"))
        self.register_buffer("scale", self._per_channel(scale, c, "scale"))
        if not bool((self.scale > 0).all()):
            raise ValueError(f"scale must be positive, got {self.scale.tolist()}")

    @staticmethod
    def _per_channel(v: float | Tensor, c: int, name: str) -> Tensor:
        t = torch.as_tensor(v, dtype=torch.get_default_dtype()).detach().clone().reshape(-1)
        if t.numel() == 1:
            return t.expand(c).clone()
        if t.numel() != c:
            raise ValueError(
                f"{name} has {t.numel()} entries; give one number or one per latent channel ({c})"
            )
        return t

    def train(self, mode: bool = True) -> LatentModel:
        """Set the inner model's mode; the frozen autoencoder stays in eval mode."""
        super().train(mode)
        self.autoencoder.eval()
        return self

    def _stats(self, z: Tensor) -> tuple[Tensor, Tensor]:
        view = (1, -1) + (1,) * (z.dim() - 2)
        return self.shift.to(z.dtype).view(view), self.scale.to(z.dtype).view(view)

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Standardised latents ``(B, *latent_shape)`` of images ``x: (B, C, H, W)``.

        The posterior mean, or a posterior sample when ``sample_posterior`` is set and the model is in
        training mode (``eps`` from torch's global generator).
        """
        p = next(self.autoencoder.parameters(), None)
        if p is not None:
            x = x.to(device=p.device, dtype=p.dtype)
        mean, logvar = self.autoencoder.encode(x)
        z = mean
        if self.sample_posterior and self.training:
            z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        shift, scale = self._stats(z)
        return (z - shift) / scale

    def decode(self, z: Tensor) -> Tensor:
        """Images ``(B, C, H, W)`` in ``[-1, 1]`` from standardised latents ``z: (B, *latent_shape)``.

        Differentiable in ``z`` (for guidance or inverse problems in latent space); the autoencoder's
        weights get no gradient.
        """
        shift, scale = self._stats(z)
        p = next(self.autoencoder.parameters(), None)
        u = z * scale + shift
        if p is not None:
            u = u.to(device=p.device, dtype=p.dtype)
        return self.autoencoder.decode(u)

    def loss(self, batch: Any) -> Tensor:
        """The inner model's loss on the encoded batch; the batch's form and conditions are kept.

        ``x`` -> ``z``, ``(x, y)`` -> ``(z, y)``, ``(x,)`` -> ``(z,)``, ``{"x": x, **cond}`` -> ``{"x": z, **cond}``.
        """
        x, _ = split_batch(batch)
        z = self.encode(x)
        p = next(self.inner.parameters(), None)
        if p is not None and p.is_floating_point():
            z = z.to(p.dtype)
        if self.spatial_weight is not None or self.decoder_loss > 0:
            weight = None
            if self.spatial_weight is not None:
                shift, scale = self._stats(z)
                with torch.no_grad():
                    weight = self.spatial_weight(z * scale + shift)
            cond = {} if isinstance(batch, Tensor) else split_batch(batch)[1]
            return latent_flow_matching_loss(
                self.inner,  # type: ignore[arg-type]
                z,
                cond,
                weight=weight,
                decode=self.decode,
                decoder_weight=self.decoder_loss,
                features=self.decoder_features,
            )
        if isinstance(batch, Tensor):
            return self.inner.loss(z)
        if isinstance(batch, Mapping):
            return self.inner.loss({**batch, "x": z})
        return self.inner.loss((z, *batch[1:]))

    def generator(self, **opts: Any) -> LatentGenerator:
        """A :class:`LatentGenerator` over ``inner.generator(**opts)`` (e.g. ``guidance=`` for flow matching)."""
        return LatentGenerator(self.inner.generator(**opts), self)
