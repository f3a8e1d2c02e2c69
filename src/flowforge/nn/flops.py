r"""Cost of one network evaluation: floating-point operations counted per sample.

:func:`flops_per_eval` runs the network once on an example batch and counts the multiply-adds of its
layers. One multiply-add counts as **two** FLOPs (the convention of ``torch.utils.flop_counter``);
additions of biases, activations and normalisations are not counted.

Two counters:

- ``count="layers"`` (default): forward hooks on ``nn.Linear``, ``nn.Bilinear``, ``nn.Conv{1,2,3}d``
  and ``nn.ConvTranspose{1,2,3}d``. Exact and cheap; misses matrix products written functionally
  (e.g. attention scores ``q @ k.T``).
- ``count="ops"``: ``torch.utils.flop_counter.FlopCounterMode``, every matrix product and convolution
  of the call, attention included.

For a linear layer with ``i`` inputs and ``o`` outputs one sample costs ``2 i o`` FLOPs; for a
convolution, ``2 (C_in / groups) k_1 \cdots k_n`` per output element.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["flops_per_eval", "COUNTS"]

#: Counters accepted by :func:`flops_per_eval`.
COUNTS = ("layers", "ops")

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _layer_macs(module: nn.Module, inputs: tuple[Any, ...], output: Tensor) -> int:
    """Multiply-adds of one call of a counted layer (whole batch)."""
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    if isinstance(module, nn.Bilinear):
        return output.numel() * module.in1_features * module.in2_features
    if isinstance(module, _CONV):
        per_out = (module.in_channels // module.groups) * math.prod(module.kernel_size)
        return output.numel() * per_out
    if isinstance(module, _CONV_T):
        # every input element is scattered into (C_out / groups) * prod(kernel) outputs
        per_in = (module.out_channels // module.groups) * math.prod(module.kernel_size)
        return inputs[0].numel() * per_in
    return 0


def flops_per_eval(
    net: nn.Module,
    x: Tensor,
    t: Tensor | None = None,
    *,
    count: str = "layers",
    per_sample: bool = True,
    **cond: Any,
) -> float:
    r"""FLOPs of one call ``net(x, t, **cond)`` (``2 x`` multiply-adds), per sample by default.

    Runs the network once under ``torch.no_grad()``.

    Args:
        net: the network, called ``net(x, t, **cond)`` (or ``net(x)`` when ``t`` is ``None``).
        x: an example input ``(B, *event)``; only its shape matters.
        t: example times ``(B,)``, or ``None`` for a network without time.
        count: ``"layers"`` (hooks on Linear/Conv layers) or ``"ops"`` (``FlopCounterMode``, every
            matrix product); see the module docstring.
        per_sample: divide the batch total by ``B``.
        **cond: extra keyword inputs of the network, each ``(B, ...)``.

    Returns:
        FLOPs as a float (an integer value for ``per_sample=False``).

    Example:
        >>> import torch
        >>> from flowforge.nn import MLP
        >>> net = MLP(dim=2, width=32, depth=2)  # Linear(3, 32), Linear(32, 32), Linear(32, 2)
        >>> flops_per_eval(net, torch.zeros(4, 2), torch.zeros(4))
        2368.0
    """
    if count not in COUNTS:
        raise ValueError(f"unknown count {count!r}; use one of {COUNTS}, e.g. count='layers'")
    if not isinstance(x, Tensor) or x.dim() < 1 or x.shape[0] < 1:
        raise ValueError(
            f"x must be an example batch (B, *event) with B >= 1, got "
            f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}"
        )
    args = (x,) if t is None else (x, t)
    total = 0
    if count == "ops":
        from torch.utils.flop_counter import FlopCounterMode  # part of torch; kept off import time

        mode = FlopCounterMode(display=False)
        with torch.no_grad(), mode:
            net(*args, **cond)
        total = int(mode.get_total_flops())
    else:
        macs = [0]

        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Tensor) -> None:
            macs[0] += _layer_macs(module, inputs, output)

        counted = (nn.Linear, nn.Bilinear, *_CONV, *_CONV_T)
        handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, counted)]
        try:
            with torch.no_grad():
                net(*args, **cond)
        finally:
            for h in handles:
                h.remove()
        total = 2 * macs[0]
    return total / x.shape[0] if per_sample else float(total)
