r"""The diagonal of a Jacobian, exactly or by Hutchinson probes (for divergences split by coordinate).

For :math:`f: \mathbb{R}^n \to \mathbb{R}^n` the divergence is :math:`\sum_k \partial f_k/\partial z_k`.
Entropy production is split by particle, so this returns the whole diagonal
:math:`(\partial f_k/\partial z_k)_k` laid out like ``z`` rather than its sum:

- ``"exact"``: one vector-Jacobian product per coordinate (``n`` backward passes);
- ``"hutchinson"``: :math:`\xi \odot (J^\top \xi)` averaged over Rademacher probes :math:`\xi`, an unbiased
  estimate of the diagonal whose sum is Hutchinson's (1989) trace estimator (Skilling-Hutchinson in the
  reference code, via a JVP there).

``f`` must treat batch entries independently (the batch is differentiated as a sum).

Example:
    >>> import torch
    >>> f = lambda z: z**2  # diagonal Jacobian 2 z
    >>> z = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    >>> jacobian_diagonal(f, z)[1]
    tensor([[[2., 4.],
             [6., 8.]]])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

__all__ = ["DiagonalMethod", "jacobian_diagonal"]

DiagonalMethod = Literal["exact", "hutchinson"]


def jacobian_diagonal(
    f: Callable[[Tensor], Tensor],
    z: Tensor,
    method: DiagonalMethod = "exact",
    *,
    n_probes: int = 1,
    generator: torch.Generator | None = None,
    create_graph: bool = False,
) -> tuple[Tensor, Tensor]:
    """``(f(z), diag)``: the output and the (estimated) Jacobian diagonal, both shaped like ``z`` ``(B, *event)``.

    Args:
        f: ``(B, *event) -> (B, *event)``.
        z: points.
        method: ``"exact"`` or ``"hutchinson"`` (Rademacher probes).
        n_probes: probes per point for ``"hutchinson"``.
        generator: the source of the probes.
        create_graph: keep the graph (to train through the diagonal, e.g. implicit score matching);
            otherwise both outputs are detached.
    """
    if method not in ("exact", "hutchinson"):
        raise ValueError(f"unknown divergence method {method!r}; write 'exact' or 'hutchinson'")
    if n_probes < 1:
        raise ValueError(f"n_probes must be >= 1, got {n_probes}")
    with torch.enable_grad():
        zz = z if (create_graph and z.requires_grad) else z.detach().requires_grad_(True)
        out = f(zz)
        if not isinstance(out, Tensor) or out.shape != z.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"f must return a tensor shaped like z {tuple(z.shape)}, got {got}")
        diag = torch.zeros_like(z)
        if out.requires_grad:
            if method == "exact":
                flat_out = out.reshape(z.shape[0], -1)
                n = flat_out.shape[1]
                cols = []
                for i in range(n):
                    (gr,) = torch.autograd.grad(
                        flat_out[:, i].sum(),
                        zz,
                        retain_graph=True,
                        create_graph=create_graph,
                        allow_unused=True,
                    )
                    cols.append(
                        gr.reshape(z.shape[0], -1)[:, i] if gr is not None else flat_out.new_zeros(z.shape[0])
                    )
                diag = torch.stack(cols, 1).reshape(z.shape)
            else:
                for _ in range(n_probes):
                    xi = torch.randint(0, 2, z.shape, generator=generator, device="cpu").to(z) * 2 - 1
                    (gr,) = torch.autograd.grad(
                        out,
                        zz,
                        grad_outputs=xi,
                        retain_graph=True,
                        create_graph=create_graph,
                        allow_unused=True,
                    )
                    if gr is not None:
                        diag = diag + xi * gr
                diag = diag / n_probes
    if not create_graph:
        out, diag = out.detach(), diag.detach()
    return out, diag
