"""Exponential moving average (EMA) of a model's parameters."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor, nn

__all__ = ["EMA"]


class EMA:
    r"""Exponential moving average of a module's floating-point parameters; buffers are copied.

    After the :math:`n`-th call of :meth:`update` (:math:`n = 0, 1, \dots` counts earlier updates),

    .. math::

        \bar\theta \leftarrow d_n \bar\theta + (1 - d_n)\,\theta,
        \qquad d_n = \begin{cases} \min\!\big(d, \tfrac{1 + n}{10 + n}\big) & \text{warm-up} \\
        d & \text{otherwise,} \end{cases}

    the warm-up rule of TensorFlow's ``ExponentialMovingAverage(num_updates=n)``, so early averages
    are not dominated by the initial weights. Buffers (e.g. batch-norm statistics) and non-float
    parameters are copied, not averaged. The average is kept in the layout of ``model.state_dict()``,
    so it loads into the same architecture with ``load_state_dict(strict=True)``.

    Args:
        model: the module whose parameters are averaged (the shadow starts as a copy of them).
        decay: :math:`d`, in ``[0, 1]``.
        warmup: use the warm-up rule above.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(2, 1)
        >>> ema = EMA(net, decay=0.9, warmup=False)
        >>> with torch.no_grad():
        ...     _ = net.weight.add_(1.0)
        >>> ema.update(net)
        >>> torch.allclose(ema.state_dict()["weight"], net.weight - 0.9)
        True
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, *, warmup: bool = True) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1], got {decay}; 0.999 is a common choice")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.shadow: dict[str, Tensor] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._averaged = {name for name, _ in model.named_parameters(remove_duplicate=False)}
        self._plan: tuple[int, list[Tensor], list[Tensor], list[tuple[Tensor, Tensor]]] | None = None

    def _pairs(self, model: nn.Module) -> tuple[list[Tensor], list[Tensor], list[tuple[Tensor, Tensor]]]:
        """(shadow, live) tensors to average and to copy; built once per model (the hot path reuses it)."""
        if self._plan is not None and self._plan[0] == id(model):
            return self._plan[1], self._plan[2], self._plan[3]
        live = model.state_dict(keep_vars=True)
        if live.keys() != self.shadow.keys():
            raise ValueError(
                "EMA.update got a model whose state_dict keys differ from the one the EMA was built from; "
                "pass the same model (unwrapped from DDP) every time"
            )
        avg_s, avg_p, copies = [], [], []
        for k, s in self.shadow.items():
            v = live[k].detach()
            if k in self._averaged and s.is_floating_point():
                avg_s.append(s)
                avg_p.append(v)
            else:
                copies.append((s, v))
        self._plan = (id(model), avg_s, avg_p, copies)
        return avg_s, avg_p, copies

    def current_decay(self) -> float:
        """The decay :math:`d_n` the next :meth:`update` will use."""
        if self.warmup:
            n = self.num_updates
            return min(self.decay, (1.0 + n) / (10.0 + n))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current parameters of ``model`` into the average (call after each optimizer step)."""
        d = self.current_decay()
        avg_s, avg_p, copies = self._pairs(model)
        for s, v in copies:
            s.copy_(v)
        if avg_s:
            torch._foreach_lerp_(avg_s, avg_p, 1.0 - d)  # s + (1 - d)(p - s) = d s + (1 - d) p
        self.num_updates += 1

    def state_dict(self) -> dict[str, Tensor]:
        """The averaged weights, keyed like ``model.state_dict()`` (the tensors themselves, not copies)."""
        return dict(self.shadow)

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Tensor], num_updates: int | None = None) -> None:
        """Overwrite the average (and optionally the update count) with ``state``.

        Raises:
            KeyError: ``state`` does not have exactly the keys of the average.
        """
        if state.keys() != self.shadow.keys():
            missing = sorted(self.shadow.keys() - state.keys())
            extra = sorted(state.keys() - self.shadow.keys())
            raise KeyError(f"EMA state does not match the model: missing {missing}, unexpected {extra}")
        for k, s in self.shadow.items():
            s.copy_(state[k])
        if num_updates is not None:
            self.num_updates = int(num_updates)

    def to(self, device: torch.device | str) -> EMA:
        """Move the average to ``device`` (in place); returns self."""
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
        self._plan = None
        return self

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights into ``model`` (strict)."""
        model.load_state_dict(self.shadow, strict=True)

    @contextmanager
    def swapped(self, model: nn.Module) -> Iterator[nn.Module]:
        """Context manager: ``model`` holds the averaged weights inside, its own weights again after."""
        raw = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.copy_to(model)
        try:
            yield model
        finally:
            model.load_state_dict(raw, strict=True)
