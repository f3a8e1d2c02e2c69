r"""Dispersive loss: a regulariser that spreads a network's intermediate features within a batch.

"Diffuse and Disperse" (Wang & He, 2025, arXiv:2506.09027) adds to the generative loss a contrastive
term without positive pairs, the InfoNCE-L2 form

.. math::

    L_{disp} = \log \frac{1}{B^2} \sum_{i, j} \exp\big(-d_{ij} / \tau\big), \qquad
    d_{ij} = \frac{\|z_i - z_j\|^2}{C},

over the flattened features :math:`z \in \mathbb{R}^{B \times C}` of one block, diagonal included:
:math:`L = 0` for collapsed features and :math:`L \to -\log B` as the rows spread. DM1 (Zou et al.,
2025, arXiv:2510.07865) applies it to MeanFlow policies; its released code uses a different form
(unsquared distances, no ``/C``, a masked diagonal that the sign flip turns into a ``+10`` logit,
logits clamped to ``[-10, 10]``), available as ``form="dm1"`` for reproductions only (see
``reference/verified-few-step.md``, section 8).

:class:`FeatureTap` collects the outputs of named submodules with forward hooks, so a training
method can add :func:`dispersive_loss` on any block of any network without changing the network.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import TracebackType

import torch
from torch import Tensor, nn

__all__ = ["dispersive_loss", "FeatureTap"]

_FORMS = ("infonce_l2", "dm1")


def dispersive_loss(h: Tensor, tau: float = 1.0, *, form: str = "infonce_l2") -> Tensor:
    r"""Dispersive loss of a batch of features ``h: (B, ...)``; a scalar to be *minimised*.

    ``form="infonce_l2"`` (default, the official Diffuse-and-Disperse form, arXiv:2506.09027):
    :math:`\log \frac{1}{B^2}\sum_{i,j} e^{-\|z_i - z_j\|^2 / (C\tau)}` with ``z = h.flatten(1)``
    of width ``C``; it lies in ``[-log B, 0]``.

    ``form="dm1"`` (the DM1 release, arXiv:2510.07865, reproduction only):
    :math:`-\frac1B\sum_i \log\sum_j e^{\min(\|z_i - z_j\| / \tau,\, 10)}` with the diagonal term set
    to :math:`e^{10}`.

    Args:
        h: features ``(B, ...)`` with ``B >= 2``.
        tau: temperature :math:`\tau > 0`.
        form: ``"infonce_l2"`` or ``"dm1"``.

    Example:
        >>> import torch
        >>> float(dispersive_loss(torch.zeros(4, 3)))  # collapsed features: 0
        0.0
        >>> round(float(dispersive_loss(torch.tensor([[0.0], [1.0]]), tau=1.0)), 4)  # log((2 + 2/e) / 4)
        -0.3799
    """
    if form not in _FORMS:
        raise ValueError(f"unknown dispersive form {form!r}; use one of {_FORMS} (default 'infonce_l2')")
    if not tau > 0:
        raise ValueError(f"the dispersive temperature tau must be > 0, got {tau}")
    if h.dim() < 2 or h.shape[0] < 2:
        raise ValueError(
            f"dispersive_loss needs features (B, ...) with B >= 2 rows, got shape {tuple(h.shape)}"
        )
    z = h.flatten(1)
    b, c = z.shape
    if form == "infonce_l2":
        # squared distances from the Gram matrix would lose precision near collapse; cdist without the
        # matrix-product shortcut takes the differences (d_ii = 0 exactly, zero gradient there) without
        # the (B, B, C) intermediate of broadcasting, ~10x faster on CPU at B = 256, C = 128
        d = torch.cdist(z, z, compute_mode="donot_use_mm_for_euclid_dist").square() / c
        return torch.logsumexp((-d / tau).flatten(), dim=0) - 2.0 * math.log(b)
    # DM1: logits = clamp(-d / tau, -10, 10) with the diagonal masked to -1e9 (-> -10 after the clamp),
    # loss = -mean_i logsumexp(-logits_i): distances are not squared and not divided by C
    d = torch.cdist(z, z)
    logits = (-d / tau).masked_fill(torch.eye(b, dtype=torch.bool, device=z.device), -1e9).clamp(-10.0, 10.0)
    return -torch.logsumexp(-logits, dim=1).mean()


class FeatureTap:
    """Collects the outputs of named submodules of ``module`` while active (a context manager).

    Each hooked call appends its output (the first tensor of a tuple output) to
    ``tap.features[name]``; hooks are removed on exit. Names are those of ``module.named_modules()``.

    Args:
        module: the network.
        names: submodule names, e.g. ``("hidden.1",)`` for :class:`~flowforge.nn.MLP` or
            ``("blocks.3",)`` for :class:`~flowforge.nn.DiT`.

    Example:
        >>> import torch
        >>> from flowforge.nn import MLP
        >>> net = MLP(dim=2, width=8, depth=2)
        >>> with FeatureTap(net, ["hidden.0"]) as tap:
        ...     _ = net(torch.randn(5, 2), torch.rand(5))
        >>> tap.features["hidden.0"][0].shape
        torch.Size([5, 8])
    """

    def __init__(self, module: nn.Module, names: Sequence[str]) -> None:
        if isinstance(names, str):
            names = (names,)
        modules = dict(module.named_modules())
        missing = [n for n in names if n not in modules or n == ""]
        if missing:
            some = [n for n in modules if n][:12]
            raise ValueError(
                f"no submodule named {missing} in {type(module).__name__}; pick names from "
                f"net.named_modules(), e.g. {some}"
            )
        if not names:
            raise ValueError("FeatureTap needs at least one submodule name, e.g. ('hidden.0',)")
        self.modules = {n: modules[n] for n in names}
        self.features: dict[str, list[Tensor]] = {n: [] for n in names}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, name: str):
        def hook(_mod: nn.Module, _inp: object, out: object) -> None:
            if isinstance(out, (tuple, list)):
                out = next((o for o in out if isinstance(o, Tensor)), None)
            if isinstance(out, Tensor):
                self.features[name].append(out)

        return hook

    def __enter__(self) -> FeatureTap:
        for v in self.features.values():
            v.clear()
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self.modules.items()]
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def all(self) -> list[Tensor]:
        """Every collected output, in module order then call order."""
        return [f for v in self.features.values() for f in v]
