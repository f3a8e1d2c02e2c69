r"""Blockwise flow matching: one small velocity network per time segment.

Park et al. (2025), "Blockwise Flow Matching: Improving Flow Matching Models for Efficient High-Quality
Generation", arXiv:2510.21167; official code ``mlvlab/Blockwise-Flow-Matching``.

The time axis :math:`[0, 1]` is cut into ``K`` segments :math:`[t_k, t_{k+1})` and segment ``k`` has
its own velocity network :math:`v_k`; the model's velocity is :math:`v(x, t) = v_{k(t)}(x, t)`. Each
network only has to fit the velocity on its own interval, so it can be much smaller than one network
for all of :math:`[0, 1]`, and one sampling step costs one small network.

Time direction: the paper (and its code) put noise at t=1; here t=0 is noise and t=1 data, converted
with ``t' = 1 - t``, ``v' = -v`` (the sheet's section 6). Both count segments from the noise end: the
code's segment ``k`` (noise levels ``1 - k/K`` down to ``1 - (k+1)/K``) is our ``[k/K, (k+1)/K]``.

Training (:class:`BlockwiseFlowMatching`) is ordinary conditional flow matching with the routed
velocity: each sample's loss reaches only the network of its segment. As in the official code the
batch is stratified: it is split as evenly as possible over the segments (the first ``B mod K``
segments get one extra row) and ``t`` is uniform inside each (:class:`SegmentTimes`). ``segment=k``
trains segment ``k`` alone (``t`` uniform in it; the other networks are not called).

Sampling (:class:`BlockwiseGenerator`) runs the chosen solver segment by segment, each segment with
its own network only (as the official sampler does), and can report the cost in FLOPs per sample.

Not implemented (not trivial on toys): the paper's Semantic Feature Guidance (a shared trunk aligned
with DINOv2 features that conditions every block) and Feature Residual Approximation (the FRN
fine-tune that replaces the trunk inside a segment).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from flowforge.continuous.flow_matching import FlowMatching
from flowforge.continuous.generator import FlowGenerator
from flowforge.core import solvers as S
from flowforge.core.couplings import Coupling
from flowforge.core.objectives import Distance
from flowforge.core.paths import Path
from flowforge.core.time import TimeSampler
from flowforge.nn.flops import flops_per_eval

__all__ = [
    "BlockwiseVelocity",
    "SegmentTimes",
    "BlockwiseFlowMatching",
    "BlockwiseGenerator",
    "SamplingCost",
]

_EXAMPLE_SEGMENTS = "[(0.0, 0.5, net_a), (0.5, 1.0, net_b)]"


def _check_edges(edges: Sequence[float]) -> tuple[float, ...]:
    """Validate segment edges ``0 = t_0 < t_1 < ... < t_K = 1``."""
    e = tuple(float(v) for v in edges)
    if len(e) < 2:
        raise ValueError(f"need at least one segment (K >= 1), got edges {e}; e.g. edges (0.0, 0.5, 1.0)")
    if e[0] != 0.0 or e[-1] != 1.0:
        raise ValueError(f"segments must cover [0, 1]: the first starts at 0 and the last ends at 1, got {e}")
    if any(not b > a for a, b in zip(e[:-1], e[1:])):
        raise ValueError(f"segments must have increasing, non-empty intervals t0 < t1, got edges {e}")
    return e


class BlockwiseVelocity(nn.Module):
    r"""A velocity :math:`v(x, t) = v_{k(t)}(x, t)` made of one network per time segment.

    Segment ``k`` owns :math:`t_k \le t < t_{k+1}`; the last one also owns ``t = 1``. A batch may mix
    segments: each sample goes to its own network (one call per segment present in the batch), and the
    outputs are put back in batch order.

    Args:
        segments: ``[(t0, t1, net), ...]`` in time order, contiguous, from 0 to 1; each ``net`` is called
            ``net(x, t, **cond)``.

    Example:
        >>> import torch
        >>> from flowforge.nn import MLP
        >>> v = BlockwiseVelocity([(0.0, 0.5, MLP(2, 16, 1)), (0.5, 1.0, MLP(2, 16, 1))])
        >>> v.segment_of(torch.tensor([0.0, 0.49, 0.5, 1.0])).tolist()
        [0, 0, 1, 1]
        >>> v(torch.randn(4, 2), torch.tensor([0.1, 0.7, 0.2, 1.0])).shape
        torch.Size([4, 2])
    """

    def __init__(self, segments: Sequence[tuple[float, float, nn.Module]]) -> None:
        super().__init__()
        segments = list(segments)
        if not segments:
            raise ValueError(
                f"BlockwiseVelocity needs at least one segment (K >= 1); write e.g. {_EXAMPLE_SEGMENTS}"
            )
        for i, seg in enumerate(segments):
            if not isinstance(seg, (tuple, list)) or len(seg) != 3 or not callable(seg[2]):
                raise ValueError(
                    f"segment {i} must be a triple (t0, t1, net) with a callable net, got {seg!r}; "
                    f"write e.g. {_EXAMPLE_SEGMENTS}"
                )
        for i, (a, b) in enumerate(zip(segments[:-1], segments[1:])):
            if float(a[1]) != float(b[0]):
                raise ValueError(
                    f"segments {i} and {i + 1} do not meet: {i} ends at {a[1]} but {i + 1} starts at {b[0]}; "
                    "segments must be contiguous (t1 of one is t0 of the next)"
                )
        self.edges = _check_edges([float(s[0]) for s in segments] + [float(segments[-1][1])])
        nets = [s[2] for s in segments]
        if not all(isinstance(n, nn.Module) for n in nets):
            raise TypeError("every segment's net must be an nn.Module (wrap a function in a small Module)")
        self.nets = nn.ModuleList(nets)

    @classmethod
    def uniform(cls, num_segments: int, make_net: Callable[[int], nn.Module]) -> BlockwiseVelocity:
        """``K`` equal segments ``[k/K, (k+1)/K]`` with ``make_net(k)`` as segment ``k``'s network.

        Example:
            >>> from flowforge.nn import MLP
            >>> BlockwiseVelocity.uniform(4, lambda k: MLP(2, 16, 1)).edges
            (0.0, 0.25, 0.5, 0.75, 1.0)
        """
        if isinstance(num_segments, bool) or int(num_segments) != num_segments or num_segments < 1:
            raise ValueError(f"num_segments must be an integer K >= 1, got {num_segments!r}")
        k = int(num_segments)
        edges = [i / k for i in range(k + 1)]
        edges[-1] = 1.0
        return cls([(edges[i], edges[i + 1], make_net(i)) for i in range(k)])

    @property
    def num_segments(self) -> int:
        """``K``, the number of segments."""
        return len(self.nets)

    def segment_of(self, t: Tensor) -> Tensor:
        """The segment index of each time ``t: (B,)`` in ``[0, 1]``; ``(B,)`` int64."""
        if t.dim() != 1:
            raise ValueError(f"t must have shape (B,), got {tuple(t.shape)}")
        if t.numel() and (bool((t < 0).any()) or bool((t > 1).any()) or bool(t.isnan().any())):
            raise ValueError(
                f"times must lie in [0, 1] to be routed to a segment, got range "
                f"[{float(t.min())}, {float(t.max())}]"
            )
        inner = torch.tensor(self.edges[1:-1], dtype=t.dtype, device=t.device)
        # right=True: edges[k] <= t < edges[k+1] -> k; t = 1 is above every inner edge -> K - 1
        return torch.bucketize(t, inner, right=True)

    def forward(self, x: Tensor, t: Tensor, **cond: Any) -> Tensor:
        """Routed velocity; ``x: (B, *event)``, ``t: (B,)`` -> ``(B, *event)``."""
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        idx = self.segment_of(t)
        out: Tensor | None = None
        for k, net in enumerate(self.nets):
            mask = idx == k
            if not bool(mask.any()):
                continue
            if bool(mask.all()):
                return net(x, t, **cond)
            sel = mask.nonzero().squeeze(1)
            sub = {c: (v[sel] if isinstance(v, Tensor) else v) for c, v in cond.items()}
            vk = net(x[sel], t[sel], **sub)
            if out is None:
                out = x.new_empty(x.shape, dtype=vk.dtype)
            out = out.index_copy(0, sel, vk)  # out of place: gradients reach each vk
        assert out is not None  # a non-empty batch always hits a segment
        return out


class SegmentTimes(TimeSampler):
    r"""Training times for blockwise flow matching: stratified over segments, or inside one segment.

    With ``segment=None`` a batch of ``n`` is split as evenly as possible over the ``K`` segments in
    batch order (the first ``n mod K`` segments get one extra row, as in the official code) and each
    row's ``t`` is uniform in its segment. With ``segment=k`` every ``t`` is uniform in
    :math:`[t_k, t_{k+1})` (right end excluded, so that routing keeps it in segment ``k``).

    Args:
        edges: segment edges ``(0, t_1, ..., 1)``.
        segment: ``None`` (all segments) or the index of one segment.

    Example:
        >>> import torch
        >>> t = SegmentTimes((0.0, 0.5, 1.0))(4, generator=torch.Generator().manual_seed(0))
        >>> [(0.0 <= v < 0.5) for v in t[:2].tolist()], [(0.5 <= v < 1.0) for v in t[2:].tolist()]
        ([True, True], [True, True])
    """

    def __init__(self, edges: Sequence[float], segment: int | None = None) -> None:
        self.edges = _check_edges(edges)
        k = len(self.edges) - 1
        if segment is not None and (
            isinstance(segment, bool) or int(segment) != segment or not 0 <= segment < k
        ):
            raise ValueError(f"segment must be None (all) or an integer in 0..{k - 1}, got {segment!r}")
        self.segment = None if segment is None else int(segment)

    def from_uniform(self, u: Tensor) -> Tensor:
        e = torch.tensor(self.edges, dtype=torch.float64, device=u.device)
        if self.segment is not None:
            idx = torch.full(u.shape, self.segment, dtype=torch.long, device=u.device)
        else:
            n, k = u.shape[0], len(self.edges) - 1
            counts = [n // k + (1 if i < n % k else 0) for i in range(k)]
            idx = torch.repeat_interleave(
                torch.arange(k, device=u.device), torch.tensor(counts, device=u.device)
            )
        lo, hi = e[idx], e[idx + 1]
        t = (lo + (hi - lo) * u.to(torch.float64)).to(u.dtype)
        # rounding (float32) may carry lo + w u up to hi; keep t inside [lo, hi) so routing agrees
        below = torch.nextafter(hi.to(u.dtype), torch.full_like(t, -math.inf))
        last = idx == len(self.edges) - 2
        return torch.where(last, t.clamp(max=1.0), torch.minimum(t, below))


class SamplingCost(NamedTuple):
    """Cost of one :meth:`BlockwiseGenerator.sample` call.

    Attributes:
        nfe: network evaluations per segment (one per batch call of that segment's network).
        flops_per_eval: FLOPs of one evaluation of each segment's network, per sample.
        flops_per_sample: total FLOPs per generated sample, ``sum_k nfe[k] * flops_per_eval[k]``.
    """

    nfe: tuple[int, ...]
    flops_per_eval: tuple[float, ...]
    flops_per_sample: float


class BlockwiseGenerator(FlowGenerator):
    """Samples segment by segment, each segment with its own network only.

    It is a :class:`~flowforge.continuous.generator.FlowGenerator` of the routed velocity (so
    ``log_prob`` and ``score`` work as for any flow); :meth:`sample` instead integrates each segment
    :math:`[t_k, t_{k+1}]` with ``steps`` solver steps and that segment's field, so a solver's last
    stage at :math:`t_{k+1}` still uses network ``k``.

    Args:
        fields: one velocity ``v_k(x, t, **cond)`` per segment.
        nets: the networks behind the fields (for the FLOP count).
        edges: segment edges ``(0, ..., 1)``.
        field: the routed velocity over all of ``[0, 1]``.
        event_shape: shape of one sample.
        path: the training path.
    """

    def __init__(
        self,
        fields: Sequence[Callable[..., Tensor]],
        nets: Sequence[nn.Module],
        edges: Sequence[float],
        field: Callable[..., Tensor],
        event_shape: tuple[int, ...],
        path: Path,
    ) -> None:
        super().__init__(field, event_shape, path)
        self.edges = _check_edges(edges)
        if not len(fields) == len(nets) == len(self.edges) - 1:
            raise ValueError(
                f"need one field and one net per segment: {len(self.edges) - 1} segments, "
                f"{len(fields)} fields, {len(nets)} nets"
            )
        self.fields, self.nets = list(fields), list(nets)

    def sample(  # type: ignore[override]
        self,
        n: int,
        *,
        cond: dict[str, Tensor] | None = None,
        generator: torch.Generator | None = None,
        solver: str | S.Solver = "heun",
        steps: int | Sequence[int] = 4,
        x0: Tensor | None = None,
        return_cost: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        **opts: Any,
    ) -> Tensor | tuple[Tensor, SamplingCost]:
        """Draw ``n`` samples ``(n, *event)``, noise (t=0) to data (t=1), segment by segment.

        Args:
            n: number of samples.
            cond: conditions passed to the networks, each ``(n, ...)``.
            generator: source of randomness for the noise (and the SDE's increments).
            solver: a name in :data:`~flowforge.continuous.generator.SOLVERS` or a solver object.
            steps: steps PER SEGMENT on a uniform grid of that segment (an int for all, or one int per
                segment); the official sampler takes the same number in every segment.
            x0: start from these source samples instead of drawing them.
            return_cost: also return a :class:`SamplingCost` (NFE and FLOPs per sample).
            **opts: passed on to :meth:`FlowGenerator.sample` (``eps``, ``atol``, ``rtol``, ``qmc``).

        Example:
            >>> import torch
            >>> from flowforge.continuous import BlockwiseFlowMatching
            >>> from flowforge.nn import MLP
            >>> bfm = BlockwiseFlowMatching.uniform(2, lambda k: MLP(2, 16, 1), event_shape=(2,))
            >>> x, cost = bfm.generator().sample(8, steps=2, solver="euler", return_cost=True,
            ...                                  generator=torch.Generator().manual_seed(0))
            >>> x.shape, cost.nfe, cost.flops_per_sample
            (torch.Size([8, 2]), (2, 2), 640.0)
        """
        k = len(self.fields)
        per = [int(steps)] * k if isinstance(steps, int) else [int(s) for s in steps]
        if len(per) != k or min(per) < 1:
            raise ValueError(f"steps must be an int >= 1 or {k} ints >= 1 (one per segment), got {steps!r}")
        if "grid" in opts:
            raise ValueError(
                "BlockwiseGenerator builds one uniform grid per segment; pass steps=... instead of grid"
            )
        cond = dict(cond or {})
        x = x0
        nfe = [0] * k
        for i, field in enumerate(self.fields):

            def counted(
                x: Tensor, t: Tensor, /, _f: Callable[..., Tensor] = field, _i: int = i, **c: Tensor
            ) -> Tensor:  # x, t positional-only: a condition may be called y (class labels)
                nfe[_i] += 1
                return _f(x, t, **c)

            sub = FlowGenerator(counted, self.event_shape, self.path)
            grid = S.uniform_grid(per[i], self.edges[i], self.edges[i + 1])
            x = sub.sample(
                n,
                cond=cond,
                generator=generator,
                solver=solver,
                grid=grid,
                x0=x,
                device=device,
                dtype=dtype,
                **opts,
            )
        assert x is not None
        if not return_cost:
            return x
        flops = self.flops_per_eval(x[:1], {c: v[:1] for c, v in cond.items()})
        total = float(sum(a * b for a, b in zip(nfe, flops)))
        return x, SamplingCost(nfe=tuple(nfe), flops_per_eval=flops, flops_per_sample=total)

    def flops_per_eval(self, x: Tensor, cond: dict[str, Tensor] | None = None) -> tuple[float, ...]:
        """FLOPs per sample of one evaluation of each segment's network, at an example ``x: (B, *event)``."""
        out = []
        for i, net in enumerate(self.nets):
            t = torch.full((x.shape[0],), self.edges[i], dtype=x.dtype, device=x.device)
            out.append(flops_per_eval(net, x, t, **(cond or {})))
        return tuple(out)


class BlockwiseFlowMatching(FlowMatching):
    r"""Blockwise flow matching (Park et al., 2025, arXiv:2510.21167): K segment networks trained as one.

    A recipe of parts: :class:`~flowforge.continuous.FlowMatching` with a :class:`BlockwiseVelocity`
    as the network and :class:`SegmentTimes` as the time sampler. Every other part (path, coupling,
    prediction, distance, weighting, label dropout) is FlowMatching's.

    Args:
        segments: ``[(t0, t1, net), ...]`` (see :class:`BlockwiseVelocity`) or a ready
            :class:`BlockwiseVelocity`.
        segment: ``None`` trains all segments jointly (stratified batch, each sample's loss reaches only
            its own network); ``k`` trains segment ``k`` alone (the others are not called, so get no
            gradient). Can be changed between training stages: ``bfm.segment = 2``.
        time: a training-time sampler for joint training instead of the stratified one (ignored when
            ``segment`` is set: then ``t`` is uniform in segment ``k``).
        **kwargs: FlowMatching's ``path``, ``coupling``, ``prediction``, ``distance``, ``weighting``,
            ``label_dropout``, ``null_label``, ``t_range``, ``event_shape``.

    Example:
        >>> import torch
        >>> from flowforge.continuous import BlockwiseFlowMatching
        >>> from flowforge.nn import MLP
        >>> bfm = BlockwiseFlowMatching([(0.0, 0.3, MLP(2, 16, 1)), (0.3, 1.0, MLP(2, 32, 2))])
        >>> loss = bfm.loss(torch.randn(64, 2))
        >>> bfm.segment = 1  # now only the second network trains
        >>> loss = bfm.loss(torch.randn(64, 2))
        >>> bfm.generator().sample(8, steps=[1, 3], generator=torch.Generator().manual_seed(0)).shape
        torch.Size([8, 2])
    """

    def __init__(
        self,
        segments: Sequence[tuple[float, float, nn.Module]] | BlockwiseVelocity,
        *,
        segment: int | None = None,
        time: TimeSampler | None = None,
        path: Path | None = None,
        coupling: Coupling | None = None,
        prediction: str = "velocity",
        distance: Distance | None = None,
        weighting: Callable[[Tensor], Tensor] | None = None,
        label_dropout: float = 0.0,
        null_label: int | None = None,
        t_range: tuple[float, float] = (0.0, 1.0),
        event_shape: tuple[int, ...] | None = None,
    ) -> None:
        velocity = segments if isinstance(segments, BlockwiseVelocity) else BlockwiseVelocity(segments)
        if event_shape is None:
            shapes = {getattr(n, "event_shape", None) for n in velocity.nets}
            event_shape = shapes.pop() if len(shapes) == 1 else None
        super().__init__(
            velocity,
            path=path,
            time=time,
            coupling=coupling,
            prediction=prediction,
            distance=distance,
            weighting=weighting,
            label_dropout=label_dropout,
            null_label=null_label,
            t_range=t_range,
            event_shape=event_shape,
        )
        self.joint_time = time if time is not None else SegmentTimes(velocity.edges)
        self.segment = segment

    @classmethod
    def uniform(
        cls, num_segments: int, make_net: Callable[[int], nn.Module], **kwargs: Any
    ) -> BlockwiseFlowMatching:
        """``K`` equal segments with ``make_net(k)`` as segment ``k``'s network (see :meth:`BlockwiseVelocity.uniform`)."""
        return cls(BlockwiseVelocity.uniform(num_segments, make_net), **kwargs)

    @property
    def velocity_net(self) -> BlockwiseVelocity:
        """The :class:`BlockwiseVelocity` being trained."""
        assert isinstance(self.net, BlockwiseVelocity)
        return self.net

    @property
    def segment(self) -> int | None:
        """The segment trained alone, or ``None`` for joint training."""
        return self._segment

    @segment.setter
    def segment(self, k: int | None) -> None:
        edges = self.velocity_net.edges
        sampler = SegmentTimes(edges, k)  # validates k
        self._segment = sampler.segment
        self.time = self.joint_time if k is None else sampler

    def generator(self) -> BlockwiseGenerator:  # type: ignore[override]
        """The model as a :class:`BlockwiseGenerator` (segment-by-segment sampling, FLOP count)."""
        if self.event_shape is None:
            raise RuntimeError(
                "event shape unknown: train on a batch first or pass event_shape=... to BlockwiseFlowMatching"
            )
        nets = list(self.velocity_net.nets)

        def make(net: nn.Module) -> Callable[..., Tensor]:
            def field(x: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
                return self.to_velocity(net, x, t, **cond)

            return field

        def routed(x: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
            return self.to_velocity(self.net, x, t, **cond)

        return BlockwiseGenerator(
            [make(n) for n in nets], nets, self.velocity_net.edges, routed, self.event_shape, self.path
        )
