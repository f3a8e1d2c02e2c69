"""The feature space in which rendered views of 3-D scenes are compared (FD of views).

:func:`view_features` average-pools each view and colour channel to ``pool x pool`` and concatenates:
``(B, 2, 3, H, H) -> (B, 2 * 3 * pool^2)`` (96-d for ``pool = 4``), float64. A small, fixed, interpretable
feature space (coarse layout and colour of both views), stated wherever an FD of views is reported.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["view_features"]


def view_features(views: Tensor, pool: int = 4) -> Tensor:
    """``(B, 2 * 3 * pool^2)`` float64 features of views ``(B, 2, 3, H, H)``.

    Example:
        >>> import torch
        >>> view_features(torch.zeros(5, 2, 3, 16, 16)).shape
        torch.Size([5, 96])
    """
    if views.dim() != 5 or views.shape[1:3] != (2, 3):
        raise ValueError(f"views must be (B, 2, 3, H, H) from render_views, got {tuple(views.shape)}")
    if pool < 1 or views.shape[-1] % pool:
        raise ValueError(f"pool ({pool}) must divide the view side {views.shape[-1]}")
    b = views.shape[0]
    return F.adaptive_avg_pool2d(views.flatten(1, 2), pool).reshape(b, -1).double()
