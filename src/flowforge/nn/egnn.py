r"""An E(n)-equivariant graph network (EGNN) as a time-dependent velocity for particle systems.

Satorras, Hoogeboom & Welling, *E(n) Equivariant Graph Neural Networks*, ICML 2021 (eqs. 3-6), with
the time input and normalised coordinate updates of Klein, Krämer & Noé, *Equivariant flow matching*,
NeurIPS 2023. ``N`` particles at positions :math:`x_i \in \mathbb{R}^d` with invariant node states
:math:`h_i`; :math:`h_i^0 = \phi_\text{in}(\text{Fourier}(t))` (all particles of one type); ``depth``
layers of

.. math::

    m_{ij} &= \phi_e\big(h_i, h_j, \lVert x_i - x_j\rVert^2, \lVert x_i^0 - x_j^0\rVert^2\big), \\
    x_i &\leftarrow x_i + \frac{1}{N-1}\sum_{j \ne i} \frac{x_i - x_j}{\lVert x_i - x_j\rVert + 1}\,
        \phi_x(m_{ij}), \\
    h_i &\leftarrow h_i + \phi_h\big(h_i, \textstyle\sum_{j\ne i} m_{ij}\big),

and the velocity is :math:`v_i = x_i^L - x_i^0` minus its mean over particles. Every coefficient is a
function of invariants (distances, time), and every vector is a difference :math:`x_i - x_j`, so for
any orthogonal :math:`Q`, translation :math:`c` and permutation :math:`\sigma`

.. math:: v(Q x + c, t) = Q\,v(x, t), \qquad v(x_\sigma, t) = v(x, t)_\sigma,
          \qquad \textstyle\sum_i v_i = 0

(the field is E(d)-equivariant, reflections included, and lives on the centre-of-mass-free subspace).

**Layout.** ``x`` is ``(B, N*d)`` as the energies of :mod:`flowforge.data.energies` take it
(particle ``i`` is ``x.view(B, N, d)[:, i]``), or ``(B, N, d)``; the output has the shape of ``x``.

Example:
    >>> import torch
    >>> net = EGNN(n_particles=4, spatial_dim=2, width=16, depth=2)
    >>> x, t = torch.randn(3, 8), torch.rand(3)
    >>> v = net(x, t)
    >>> v.shape, bool(v.view(3, 4, 2).sum(1).abs().max() < 1e-5)
    (torch.Size([3, 8]), True)
    >>> perm = torch.tensor([2, 0, 3, 1])
    >>> vp = net(x.view(3, 4, 2)[:, perm].reshape(3, 8), t)
    >>> bool(torch.allclose(vp.view(3, 4, 2), v.view(3, 4, 2)[:, perm], atol=1e-5))
    True
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flowforge.nn.embeddings import FourierTime

__all__ = ["EGNN"]


class _Layer(nn.Module):
    """One EGNN layer: messages, a normalised coordinate update, a residual node update."""

    def __init__(self, width: int, coord_range: float | None) -> None:
        super().__init__()
        w = width
        self.coord_range = coord_range
        # phi_e's first linear map on [h_i, h_j, d2, d0] is split as A h_i + B h_j + c d2 + e d0: the node
        # parts cost O(N w^2) instead of O(N^2 w^2)
        self.edge_i = nn.Linear(w, w)
        self.edge_j = nn.Linear(w, w, bias=False)
        self.edge_d = nn.Linear(2, w, bias=False)
        self.edge = nn.Sequential(nn.SiLU(), nn.Linear(w, w), nn.SiLU())
        self.coord = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, 1, bias=False))
        nn.init.xavier_uniform_(self.coord[-1].weight, gain=1e-2)  # start near the zero field
        self.node = nn.Sequential(nn.Linear(2 * w, w), nn.SiLU(), nn.Linear(w, w))

    def forward(self, h: Tensor, x: Tensor, d0: Tensor, off: Tensor) -> tuple[Tensor, Tensor]:
        # h: (B, N, w), x: (B, N, d), d0: (B, N, N, 1) initial squared distances, off: (N, N, 1) 1 - I
        r = x[:, :, None] - x[:, None, :]  # (B, N, N, d): x_i - x_j
        d2 = r.square().sum(-1, keepdim=True)
        pre = self.edge_i(h)[:, :, None] + self.edge_j(h)[:, None, :] + self.edge_d(torch.cat([d2, d0], -1))
        m = self.edge(pre) * off  # (B, N, N, w), no self-edges
        coef = self.coord(m)
        if self.coord_range is not None:  # bounded coordinate weights (EDM's tanh, Hoogeboom et al. 2022)
            coef = self.coord_range * torch.tanh(coef / self.coord_range)
        coef = coef * off / (torch.sqrt(d2 + 1e-8) + 1.0)
        x = x + (r * coef).sum(2) / (x.shape[1] - 1)
        h = h + self.node(torch.cat([h, m.sum(2)], dim=-1))
        return h, x


class EGNN(nn.Module):
    r"""E(n)-equivariant velocity ``net(x, t) -> shape of x`` for ``N`` identical particles in ``d`` dimensions.

    Args:
        n_particles: ``N`` (at least 2).
        spatial_dim: ``d``.
        width: hidden size of node states and messages.
        depth: number of EGNN layers.
        n_freq: Fourier features of ``t`` (``0``: ``t`` alone).
        scale: length scale; positions are divided by it inside the network and the velocity is
            multiplied by it (e.g. the pair distance of the system: 4 for DW-4, 1 for LJ-13).
        coord_range: bound the coordinate weights :math:`\phi_x(m_{ij})` smoothly to
            :math:`(-c, c)` by :math:`c \tanh(\phi_x / c)` (``None``: unbounded, as in eq. 4). Unbounded
            weights grow with distances, so a random or poorly trained field can blow up in finite time
            far from the data (NaN samples); a bound keeps every layer's update below ``c * scale``.
    """

    def __init__(
        self,
        n_particles: int,
        spatial_dim: int,
        width: int = 64,
        depth: int = 4,
        n_freq: int = 4,
        scale: float = 1.0,
        coord_range: float | None = None,
    ) -> None:
        super().__init__()
        if int(n_particles) < 2 or int(spatial_dim) < 1:
            raise ValueError(
                f"EGNN needs n_particles >= 2 and spatial_dim >= 1, got {n_particles} and {spatial_dim}; "
                "write e.g. EGNN(n_particles=4, spatial_dim=2)"
            )
        if width < 1 or depth < 1 or not scale > 0:
            raise ValueError(f"EGNN needs width >= 1, depth >= 1, scale > 0; got {width}, {depth}, {scale}")
        self.n_particles, self.spatial_dim = int(n_particles), int(spatial_dim)
        self.event_shape = (self.n_particles * self.spatial_dim,)
        self.scale = float(scale)
        self.time = FourierTime(n_freq, max_freq=8.0)
        self.embed = nn.Sequential(nn.Linear(self.time.out_dim, width), nn.SiLU(), nn.Linear(width, width))
        if coord_range is not None and not coord_range > 0:
            raise ValueError(f"coord_range must be > 0 or None, got {coord_range}")
        self.layers = nn.ModuleList(_Layer(width, coord_range) for _ in range(depth))

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        """The mean-free equivariant velocity, shaped like ``x``: ``(B, N*d)`` or ``(B, N, d)``; ``t: (B,)``."""
        p0, h, y = self.features(x, t)
        v = (y - p0) * self.scale
        v = v - v.mean(1, keepdim=True)
        return v.reshape(x.shape)

    def features(self, x: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor, Tensor]:
        r"""The last layer's states: ``(p0, h, y)``, each ``(B, N, .)``, for heads other than the velocity.

        ``p0 = x / scale`` (the input positions in network units, ``(B, N, d)``), ``h`` the invariant node
        states ``(B, N, width)`` and ``y`` the equivariant positions ``(B, N, d)`` after the last layer:
        :math:`h(Qx + c) = h(x)`, :math:`y(Qx + c) = Q\,y(x) + c/\text{scale}`, both permutation-equivariant.
        """
        n, d = self.n_particles, self.spatial_dim
        if x.dim() == 2 and x.shape[1] == n * d:
            p = x.reshape(x.shape[0], n, d)
        elif x.dim() == 3 and tuple(x.shape[1:]) == (n, d):
            p = x
        else:
            raise ValueError(
                f"EGNN(n_particles={n}, spatial_dim={d}) takes x of shape (B, {n * d}) or (B, {n}, {d}), "
                f"got {tuple(x.shape)}"
            )
        b = p.shape[0]
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        t = t.expand(b) if t.dim() == 0 else t.reshape(-1)
        if t.shape[0] != b:
            raise ValueError(f"t must be a scalar or of shape ({b},), got {tuple(t.shape)}")
        p0 = p / self.scale
        h = self.embed(self.time(t))[:, None].expand(-1, n, -1)
        off = (1.0 - torch.eye(n, dtype=x.dtype, device=x.device))[..., None]
        d0 = (p0[:, :, None] - p0[:, None, :]).square().sum(-1, keepdim=True)
        y = p0
        for layer in self.layers:
            h, y = layer(h, y, d0, off)
        return p0, h, y

    def extra_repr(self) -> str:
        return f"n_particles={self.n_particles}, spatial_dim={self.spatial_dim}, scale={self.scale}"
