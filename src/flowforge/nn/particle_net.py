r"""A permutation-equivariant network over particles with pairwise (minimum-image) features.

Input ``z`` of shape ``(B, N, C, d)``: ``N`` particles, each with ``C`` vector channels in ``d`` dimensions;
channel 0 is the particle's position, the other channels are per-particle vectors (for active particles:
the self-propulsion :math:`g_i`). The output has the same shape (e.g. a score :math:`\nabla_z \log\rho`).

Architecture (an interaction network, DeepSets over pairs): node states :math:`h_i^0 = \phi_0(u_i)` from the
non-position channels :math:`u_i` (and, with ``absolute=True``, features of the position itself); then
``depth`` rounds of

.. math:: m_i = W\,\frac{1}{N-1}\sum_{j\ne i}\operatorname{SiLU}\big(A h_i + B h_j + E\,e_{ij}\big), \qquad
          h_i \leftarrow h_i + \psi([h_i, m_i]),

with edge features :math:`e_{ij}` of the displacement :math:`r_{ij} = x_i - x_j` (minimum image in a periodic
box :math:`[-L, L]^d`): :math:`(\sin(\pi r_{ij}/L), \cos(\pi r_{ij}/L), |r_{ij}|/\ell)` in a box (smooth and
periodic), :math:`(r_{ij}/\ell, |r_{ij}|/\ell)` in the open plane; and a linear read-out per particle.
The linear map :math:`W` is applied after the mean, so a round costs :math:`O(BN^2 w + BNw^2)`.
Permuting the particles permutes the output in the same way; without absolute positions the output is
also invariant to translations (and periodic in the box).

**Network contract.** A stationary score does not depend on time: the network is called
``net(z, t)`` like every flowforge network (so it plugs in where ``net(x, t, **cond)`` is expected) and
ignores ``t`` (``t`` may also be left out).

Example:
    >>> import torch
    >>> net = ParticleNet(dim=2, channels=2, width=16, depth=2, box=3.0)
    >>> z = torch.randn(4, 5, 2, 2)
    >>> out = net(z, torch.zeros(4))
    >>> out.shape
    torch.Size([4, 5, 2, 2])
    >>> perm = torch.tensor([3, 0, 4, 1, 2])
    >>> torch.allclose(net(z[:, perm]), out[:, perm], atol=1e-6)
    True
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["ParticleNet"]


class ParticleNet(nn.Module):
    """Permutation-equivariant particle network ``net(z, t=None) -> (B, N, C, d)`` (``t`` is ignored).

    Args:
        dim: spatial dimension ``d``.
        channels: vector channels per particle ``C`` (channel 0: position).
        width: hidden units ``w``.
        depth: message-passing rounds.
        box: half-width ``L`` of the periodic box ``[-L, L]^d``; ``None``: the open plane.
        absolute: also feed each particle's own position (breaks translation invariance; needed in a trap).
        length: length scale ``l`` that distances are divided by (e.g. the particle diameter).
        out_channels: output channels (default ``channels``).
    """

    def __init__(
        self,
        dim: int = 2,
        channels: int = 2,
        width: int = 64,
        depth: int = 2,
        *,
        box: float | None = None,
        absolute: bool = False,
        length: float = 1.0,
        out_channels: int | None = None,
    ) -> None:
        super().__init__()
        if dim < 1 or channels < 1 or width < 1 or depth < 0:
            raise ValueError(
                f"ParticleNet needs dim, channels, width >= 1 and depth >= 0; got {dim}, {channels}, {width}, {depth}"
            )
        if box is not None and not (math.isfinite(box) and box > 0):
            raise ValueError(f"box is the half-width L > 0 of the periodic box (or None), got {box!r}")
        if not length > 0:
            raise ValueError(f"length must be > 0, got {length}")
        self.dim, self.channels, self.box, self.absolute, self.length = dim, channels, box, absolute, length
        self.out_channels = out_channels or channels
        node_in = (channels - 1) * dim + ((2 * dim if box is not None else dim) if absolute else 0)
        edge_in = (2 * dim if box is not None else dim) + 1
        self.embed = nn.Sequential(nn.Linear(max(node_in, 1), width), nn.SiLU(), nn.Linear(width, width))
        self.node_a = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.node_b = nn.ModuleList(nn.Linear(width, width, bias=False) for _ in range(depth))
        self.edge = nn.ModuleList(nn.Linear(edge_in, width, bias=False) for _ in range(depth))
        self.message = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.update = nn.ModuleList(
            nn.Sequential(nn.Linear(2 * width, width), nn.SiLU(), nn.Linear(width, width))
            for _ in range(depth)
        )
        self.act = nn.SiLU()
        self.readout = nn.Linear(width, self.out_channels * dim)

    def _node_inputs(self, z: Tensor) -> Tensor:
        b, n = z.shape[:2]
        feats = [z[:, :, 1:].reshape(b, n, -1)]
        if self.absolute:
            x = z[:, :, 0]
            if self.box is not None:
                feats += [torch.sin(math.pi * x / self.box), torch.cos(math.pi * x / self.box)]
            else:
                feats.append(x / self.length)
        out = torch.cat(feats, -1)
        return out if out.shape[-1] > 0 else z.new_zeros(b, n, 1)

    def _edge_features(self, x: Tensor) -> Tensor:
        r = x[:, :, None, :] - x[:, None, :, :]
        if self.box is not None:
            L = self.box
            r = r - 2 * L * torch.round(r / (2 * L))
            ang = math.pi * r / L
            feats = [torch.sin(ang), torch.cos(ang)]
        else:
            feats = [r / self.length]
        n = x.shape[1]
        off = ~torch.eye(n, dtype=torch.bool, device=x.device)
        sq = (r * r).sum(-1)
        dist = torch.sqrt(torch.where(off, sq, torch.ones_like(sq)))  # differentiable at r_ii = 0
        return torch.cat([*feats, (dist / self.length)[..., None]], -1)

    def forward(self, z: Tensor, t: Tensor | None = None, **cond: object) -> Tensor:
        """``z: (B, N, C, d)`` -> ``(B, N, out_channels, d)``; ``t`` (and any ``cond``) is ignored."""
        if z.dim() != 4 or z.shape[2] != self.channels or z.shape[3] != self.dim:
            raise ValueError(
                f"ParticleNet expects z of shape (B, N, C, d) = (B, N, {self.channels}, {self.dim}) "
                f"(channel 0: positions), got {tuple(z.shape)}"
            )
        b, n = z.shape[:2]
        h = self.embed(self._node_inputs(z))
        if n > 1 and len(self.message) > 0:
            e = self._edge_features(z[:, :, 0])
            off = (~torch.eye(n, dtype=torch.bool, device=z.device)).to(z.dtype)[None, :, :, None]
            for a, bb, ee, msg, upd in zip(
                self.node_a, self.node_b, self.edge, self.message, self.update, strict=True
            ):
                pre = a(h)[:, :, None, :] + bb(h)[:, None, :, :] + ee(e)
                m = msg((self.act(pre) * off).sum(2) / (n - 1))
                h = h + upd(torch.cat([h, m], -1))
        return self.readout(h).reshape(b, n, self.out_channels, self.dim)
