r"""SymmFlow: symmetrical flow matching, one network for class-conditional generation and classification.

Caetano, Viviers, de With & van der Sommen (2025), "Symmetrical Flow Matching: Unified Image Generation,
Segmentation, and Classification with Score-Based Generative Models" (AAAI 2026, arXiv:2506.10634);
official code ``caetas/SymmetricFlow``, ``models/SymmFM.py`` and ``models/SymmFMClass.py``.

One velocity network carries the joint state :math:`s = (x, c)` of an image :math:`x` and a label code
:math:`c`. Along :math:`t \in [0, 1]` the image goes noise -> data while the label goes data -> noise:

.. math::
    x_t = t\,x_1 + (1 - t)\,\epsilon, \qquad c_t = (1 - t)\,c_1 + t\,\epsilon',
    \qquad u_t = (x_1 - \epsilon,\; \epsilon' - c_1),

and the loss is :math:`w\,\|v^x_\theta - (x_1 - \epsilon)\|^2 + (1 - w)\,\|v^c_\theta - (\epsilon' - c_1)\|^2`
(each term a mean over its own entries; the official code's ``image_weight``). Integrating forward from
:math:`(\epsilon, c_y)` at t=0 generates an image of class :math:`y`; integrating backward from
:math:`(x, \epsilon')` at t=1 recovers a label code. One Euler step back from t=1 gives
:math:`c_0 = \epsilon' - v^c_\theta(x, \epsilon', 1) \approx E[c_1 \mid x]`, the posterior mean of the
code: with the one-hot code its argmax is the Bayes classifier.

Time direction: the paper and its code already take the image from noise at t=0 to data at t=1, so our
t is the paper's t (no ``t' = 1 - t`` conversion); the label block runs the other way in both. The
official code keeps :math:`\sigma_{min} = 10^{-4}` (:math:`x_t = (1 - (1 - \sigma_{min}) t)\epsilon + t x_1`,
likewise for the label); we take :math:`\sigma_{min} = 0`.

Label codes: ``code="onehot"`` (default) puts :math:`c_y = s\,(2 e_y - 1) \in \{-s, s\}^K`;
``code="ordinal"`` is the official classification code, one number :math:`c_y = s\,(2y/(K-1) - 1)` (their
``beta / 2`` is our ``label_scale``; MNIST used ``beta=4``), read back by rounding to the nearest level.
Both add uniform dequantisation noise of width ``label_noise`` (official: ``label_scale / (K - 1)``).

Network contract: ``net(state, t)`` with ``state: (B, C + K, *spatial)`` (the ``K`` code numbers as ``K``
constant channels) or ``(B, D + K)`` for vectors; it returns the joint velocity of the same shape. The
label velocity is the spatial mean of the last ``K`` output channels (:func:`unpack`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from flowforge.continuous.generator import SOLVERS, make_solver
from flowforge.core import solvers as S
from flowforge.core.batch import split_batch
from flowforge.core.choices import unknown_choice
from flowforge.core.time import TimeSampler, Uniform

__all__ = ["SymmFlow", "SymmFlowGenerator", "pack", "unpack", "CODES"]

#: Label codes accepted by :class:`SymmFlow`.
CODES = ("onehot", "ordinal")


def pack(x: Tensor, c: Tensor) -> Tensor:
    """Joint state from an image ``x: (B, C, *spatial)`` and a code ``c: (B, K)``; ``(B, C + K, *spatial)``.

    The code is broadcast as ``K`` constant channels; for vectors (no spatial axes) this is a concat.

    Example:
        >>> import torch
        >>> pack(torch.zeros(2, 1, 4, 4), torch.ones(2, 3)).shape
        torch.Size([2, 4, 4, 4])
        >>> pack(torch.zeros(2, 5), torch.ones(2, 3)).shape
        torch.Size([2, 8])
    """
    if x.dim() < 2 or c.dim() != 2 or c.shape[0] != x.shape[0]:
        raise ValueError(
            f"pack needs x: (B, C, *spatial) and c: (B, K); got x {tuple(x.shape)} and c {tuple(c.shape)}"
        )
    spatial = x.shape[2:]
    cb = c.to(x.dtype).reshape(*c.shape, *([1] * len(spatial))).expand(-1, -1, *spatial)
    return torch.cat([x, cb], dim=1)


def unpack(state: Tensor, channels: int) -> tuple[Tensor, Tensor]:
    """Split a joint state (or velocity) into ``x: (B, C, *spatial)`` and ``c: (B, K)``, ``C = channels``.

    The code is the spatial mean of the last ``K`` channels, so ``unpack(pack(x, c), C) == (x, c)``.

    Example:
        >>> import torch
        >>> x, c = unpack(pack(torch.zeros(2, 1, 4, 4), torch.ones(2, 3)), 1)
        >>> x.shape, c.tolist()
        (torch.Size([2, 1, 4, 4]), [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    """
    if state.dim() < 2 or not 0 < channels < state.shape[1]:
        raise ValueError(
            f"unpack needs a state (B, C + K, *spatial) with 0 < C = {channels} < {state.shape[1]} channels"
        )
    x, c = state[:, :channels], state[:, channels:]
    if state.dim() > 2:
        c = c.mean(dim=tuple(range(2, state.dim())))
    return x, c


class SymmFlow(nn.Module):
    r"""Symmetrical flow matching (Caetano et al., 2025): generation and classification by one network.

    Args:
        net: the joint velocity network ``net(state, t)``, ``state: (B, C + K, *spatial)`` or ``(B, D + K)``
            (see :func:`pack`), returning a tensor of the same shape; an unconditional net (the label enters
            through the state), e.g. ``UNet(in_channels=C + K, out_channels=C + K)``.
        event_shape: shape of one image ``(C, H, W)`` (or ``(D,)`` for vectors).
        num_classes: number of classes; labels ``y`` are int64 in ``0 .. num_classes - 1``.
        code: ``"onehot"`` (``K = num_classes`` code numbers in ``{-s, s}``) or ``"ordinal"`` (the
            official code's one number per sample, ``K = 1``).
        label_scale: the code's scale ``s`` (the official ``beta / 2``; their MNIST run used 2).
        label_noise: width of the uniform dequantisation noise added to the code (0 for none).
        time: training-time sampler (default uniform, as in the paper).
        image_weight: ``w`` in ``w * L_image + (1 - w) * L_label`` (official default 0.9).

    Example:
        >>> import torch
        >>> from flowforge.continuous import SymmFlow
        >>> from flowforge.nn import MLP
        >>> sf = SymmFlow(MLP(dim=2 + 3, width=32, depth=2), (2,), num_classes=3)
        >>> loss = sf.loss((torch.randn(64, 2), torch.randint(0, 3, (64,))))
        >>> g = torch.Generator().manual_seed(0)
        >>> sf.classify(torch.randn(5, 2), generator=g).shape
        torch.Size([5, 3])
        >>> sf.generator().sample(4, cond={"y": torch.tensor([0, 1, 2, 0])}, steps=4, generator=g).shape
        torch.Size([4, 2])
    """

    def __init__(
        self,
        net: nn.Module,
        event_shape: tuple[int, ...],
        num_classes: int,
        *,
        code: str = "onehot",
        label_scale: float = 2.0,
        label_noise: float = 0.0,
        time: TimeSampler | None = None,
        image_weight: float = 0.9,
    ) -> None:
        super().__init__()
        event_shape = tuple(int(n) for n in event_shape)
        if len(event_shape) < 1 or min(event_shape) < 1:
            raise ValueError(
                f"event_shape must be (C, *spatial) or (D,) with positive sizes, got {event_shape}; "
                "write e.g. (1, 28, 28) for MNIST or (2,) for 2-D points"
            )
        if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if code not in CODES:
            raise unknown_choice("code", code, CODES)
        if not label_scale > 0:
            raise ValueError(f"label_scale must be > 0, got {label_scale}; e.g. label_scale=2.0")
        if not label_noise >= 0:
            raise ValueError(f"label_noise must be >= 0 (a uniform width), got {label_noise}")
        if not 0.0 <= image_weight <= 1.0:
            raise ValueError(f"image_weight must lie in [0, 1], got {image_weight}; e.g. image_weight=0.9")
        self.net = net
        self.event_shape = event_shape
        self.num_classes = int(num_classes)
        self.code = code
        self.label_scale = float(label_scale)
        self.label_noise = float(label_noise)
        self.time = time if time is not None else Uniform()
        self.image_weight = float(image_weight)
        k = self.num_classes
        if code == "onehot":
            codes = 2.0 * torch.eye(k, dtype=torch.float64) - 1.0
        else:
            codes = (2.0 * torch.arange(k, dtype=torch.float64) / (k - 1) - 1.0).unsqueeze(1)
        # (num_classes, K) table of class codes; derived from the config, so not saved in checkpoints
        self.register_buffer("codes", self.label_scale * codes, persistent=False)
        self._check_net()

    def _check_net(self) -> None:
        """Catch a net built for the image alone (the commonest slip) before the first call."""
        c, k = self.channels, self.code_dim
        joint = (c + k, *self.event_shape[1:])
        hint = (
            f"SymmFlow's net sees the joint state (B, C + K, ...) = (B, {', '.join(map(str, joint))}): "
            f"build it as MLP(dim={joint if len(joint) > 1 else joint[0]}) or "
            f"UNet(in_channels={c + k}, out_channels={c + k}, ...)"
        )
        ev = getattr(self.net, "event_shape", None)
        if ev is not None and math.prod(ev) != math.prod(joint):
            raise ValueError(f"net.event_shape is {tuple(ev)}; {hint}")
        for name in ("in_channels", "out_channels"):
            n = getattr(self.net, name, None)
            if isinstance(n, int) and len(self.event_shape) > 1 and n != c + k:
                raise ValueError(f"net.{name} is {n}; {hint}")

    @property
    def code_dim(self) -> int:
        """``K``, the number of code entries (channels) the label takes in the joint state."""
        return int(self.codes.shape[1])

    @property
    def channels(self) -> int:
        """``C``, the image channels (``D`` for vectors) in the joint state."""
        return self.event_shape[0]

    # ----------------------------------------------------------------------------------------------
    # label codes
    # ----------------------------------------------------------------------------------------------

    def encode(
        self, y: Tensor, *, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
    ) -> Tensor:
        """Label code ``c_1 = c_y + label_noise * (U - 1/2)`` of labels ``y: (B,)``; ``(B, K)``."""
        if y.dim() != 1 or y.dtype in (torch.float16, torch.float32, torch.float64, torch.bfloat16):
            raise ValueError(f"y must be (B,) integer class labels, got shape {tuple(y.shape)}, {y.dtype}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ValueError(
                f"labels must lie in 0..{self.num_classes - 1}, got range {int(y.min())}..{int(y.max())}"
            )
        c = self.codes.to(dtype)[y.to(self.codes.device)]
        if self.label_noise > 0:
            u = torch.rand(c.shape, generator=generator, dtype=dtype, device=c.device)
            c = c + self.label_noise * (u - 0.5)
        return c

    def scores(self, c: Tensor) -> Tensor:
        r"""Class scores :math:`-\|c - c_k\|^2` of codes ``c: (B, K)``; ``(B, num_classes)``, argmax = label.

        For the one-hot code the argmax is the argmax of ``c``; for the ordinal code it is the rounding.
        """
        codes = self.codes.to(c.dtype)
        return -(c.unsqueeze(1) - codes.unsqueeze(0)).square().sum(-1)

    # ----------------------------------------------------------------------------------------------
    # path, loss, velocity
    # ----------------------------------------------------------------------------------------------

    def interpolate(
        self, x1: Tensor, c1: Tensor, eps: Tensor, eps_c: Tensor, t: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        r"""The joint path and its velocity: ``(x_t, c_t, u_x, u_c)``.

        :math:`x_t = t x_1 + (1-t)\epsilon`, :math:`c_t = (1-t) c_1 + t\epsilon'`,
        :math:`u_x = x_1 - \epsilon`, :math:`u_c = \epsilon' - c_1`; ``x1, eps: (B, *event)``,
        ``c1, eps_c: (B, K)``, ``t: (B,)``.
        """
        tx = t.reshape(-1, *([1] * (x1.dim() - 1)))
        tc = t.reshape(-1, 1)
        x_t = tx * x1 + (1 - tx) * eps
        c_t = (1 - tc) * c1 + tc * eps_c
        return x_t, c_t, x1 - eps, eps_c - c1

    def loss(self, batch: Any) -> Tensor:
        """Symmetrical flow-matching loss on a batch ``(x, y)``, ``x: (B, *event)``, ``y: (B,)``; a scalar."""
        x1, cond = split_batch(batch)
        if "y" not in cond:
            raise ValueError("SymmFlow trains on labelled batches: pass (x, y) with y: (B,) class labels")
        if tuple(x1.shape[1:]) != self.event_shape:
            raise ValueError(f"x has event shape {tuple(x1.shape[1:])}, the model expects {self.event_shape}")
        b = x1.shape[0]
        c1 = self.encode(cond["y"], dtype=x1.dtype).to(x1.device)
        eps, eps_c = torch.randn_like(x1), torch.randn_like(c1)
        t = self.time(b, device=x1.device, dtype=x1.dtype)
        x_t, c_t, u_x, u_c = self.interpolate(x1, c1, eps, eps_c, t)
        out = self._net(pack(x_t, c_t), t)
        c = self.channels
        loss_x = (out[:, :c] - u_x).square().mean()
        # like the official code, every broadcast label channel regresses on the label velocity
        # (= MSE of the spatial mean plus the spatial variance of the label output)
        loss_c = (out[:, c:] - pack(u_x, u_c)[:, c:]).square().mean()
        return self.image_weight * loss_x + (1.0 - self.image_weight) * loss_c

    def _net(self, state: Tensor, t: Tensor) -> Tensor:
        out = self.net(state, t)
        if not isinstance(out, Tensor) or out.shape != state.shape:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"net returned {shape} for a joint state {tuple(state.shape)}; SymmFlow's net must map "
                f"(B, C + K, ...) to the same shape (C = {self.channels} image + K = {self.code_dim} label "
                "channels), e.g. MLP(dim=D + K) or UNet(in_channels=C + K, out_channels=C + K)"
            )
        return out

    def velocity(self, state: Tensor, t: Tensor) -> Tensor:
        """Joint velocity at ``state: (B, C + K, *spatial)``, ``t: (B,)``, with the label part's spatial
        mean broadcast back (so constant label channels stay constant); same shape as ``state``."""
        return pack(*unpack(self._net(state, t), self.channels))

    # ----------------------------------------------------------------------------------------------
    # generation and classification
    # ----------------------------------------------------------------------------------------------

    def _integrate(self, state: Tensor, solver: str | S.Solver, steps: int, forward: bool) -> Tensor:
        if isinstance(solver, S.EulerMaruyama) or solver == "sde":
            ode = sorted(n for n in SOLVERS if n != "sde")
            raise ValueError(f"SymmFlow integrates an ODE; use one of {ode} (e.g. solver='heun')")
        solver = make_solver(solver)
        n = 1 if isinstance(solver, S.Dopri5) else steps
        grid = S.uniform_grid(n) if forward else S.uniform_grid(n, 1.0, 0.0)
        with torch.no_grad():
            return S.solve(self.velocity, state, solver, grid.to(state.dtype)).x

    def generate(
        self,
        y: Tensor,
        *,
        generator: torch.Generator | None = None,
        solver: str | S.Solver = "heun",
        steps: int = 16,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """Class-conditional samples: integrate 0 -> 1 from ``(eps, c_y)``; ``y: (n,)`` -> ``(n, *event)``.

        Args:
            y: class labels.
            generator: source of the image noise and the code's dequantisation noise.
            solver: a name in :data:`~flowforge.continuous.SOLVERS` (not ``"sde"``) or a solver object.
            steps: uniform steps from 0 to 1.
        """
        c0 = self.encode(y, generator=generator, dtype=dtype)
        eps = torch.randn((y.shape[0], *self.event_shape), generator=generator, dtype=dtype, device=c0.device)
        out = self._integrate(pack(eps, c0), solver, steps, forward=True)
        return unpack(out, self.channels)[0]

    def classify(
        self,
        x: Tensor,
        *,
        steps: int = 1,
        generator: torch.Generator | None = None,
        solver: str | S.Solver = "euler",
    ) -> Tensor:
        """Class scores of images ``x: (B, *event)``: integrate 1 -> 0 from ``(x, eps')``; ``(B, num_classes)``.

        One Euler step (the default) reads the posterior-mean code ``c_0 = eps' - v_c(x, eps', 1)``;
        ``scores(c_0).argmax(1)`` is the predicted label.

        Args:
            x: data (images at t=1).
            steps: uniform steps from 1 to 0.
            generator: source of the label noise ``eps'`` at t=1.
            solver: a name in :data:`~flowforge.continuous.SOLVERS` (not ``"sde"``) or a solver object.
        """
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"x has event shape {tuple(x.shape[1:])}, the model expects {self.event_shape}")
        eps_c = torch.randn((x.shape[0], self.code_dim), generator=generator, dtype=x.dtype, device=x.device)
        out = self._integrate(pack(x, eps_c), solver, steps, forward=False)
        return self.scores(unpack(out, self.channels)[1])

    def generator(self) -> SymmFlowGenerator:
        """The model as a :class:`SymmFlowGenerator` (class-conditional sampling)."""
        return SymmFlowGenerator(self)


class SymmFlowGenerator:
    """A trained :class:`SymmFlow` as a Generator: ``sample(n, cond={"y": (n,)})`` and ``classify(x)``.

    Args:
        flow: the trained model.
    """

    def __init__(self, flow: SymmFlow) -> None:
        self.flow = flow
        self.event_shape = flow.event_shape
        self.num_classes = flow.num_classes

    def sample(
        self,
        n: int,
        *,
        cond: dict[str, Tensor] | None = None,
        generator: torch.Generator | None = None,
        solver: str | S.Solver = "heun",
        steps: int = 16,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        return_labels: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Draw ``n`` samples ``(n, *event)`` (and their labels ``(n,)`` if asked).

        Args:
            n: number of samples.
            cond: ``{"y": (n,)}`` class labels; drawn uniformly from ``generator`` when omitted.
            generator: source of the labels, the image noise and the code's dequantisation noise.
            solver: a name in :data:`~flowforge.continuous.SOLVERS` (not ``"sde"``) or a solver object.
            steps: uniform steps from 0 to 1.
        """
        if device is None:
            device = self.flow.codes.device
        cond = dict(cond or {})
        unknown = sorted(set(cond) - {"y"})
        if unknown:
            raise ValueError(
                f"SymmFlow is conditioned on labels only: pass cond={{'y': (n,)}}, not {unknown}"
            )
        if "y" in cond:
            y = cond["y"]
            if tuple(y.shape) != (n,):
                raise ValueError(f"cond['y'] must have shape ({n},), got {tuple(y.shape)}")
        else:
            gdev = generator.device if generator is not None else device
            y = torch.randint(0, self.num_classes, (n,), generator=generator, device=gdev)
        y = y.to(device)
        x = self.flow.generate(y, generator=generator, solver=solver, steps=steps, dtype=dtype)
        return (x, y) if return_labels else x

    def classify(self, x: Tensor, **opts: Any) -> Tensor:
        """Class scores ``(B, num_classes)``; see :meth:`SymmFlow.classify`."""
        return self.flow.classify(x, **opts)
