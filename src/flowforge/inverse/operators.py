r"""Linear measurement operators :math:`y = A x + \sigma n` for inverse problems, with their adjoints.

Each operator maps a batch ``x: (B, *event)`` to ``y: (B, *measured)`` and provides

- ``forward(x)`` (also ``op(x)``): :math:`A x`;
- ``adjoint(y)``: :math:`A^\top y`, so that :math:`\langle A x, y\rangle = \langle x, A^\top y\rangle`;
- ``pseudo_inverse(y)``: :math:`A^+ y` (exact where cheap, else Tikhonov-regularised conjugate gradients on
  :math:`(A^\top A + \epsilon I) x = A^\top y`);
- ``measure(x, sigma, generator=...)``: a noisy measurement :math:`A x + \sigma n`, :math:`n \sim N(0, I)`.

==========================  ===========================================================================
:class:`Inpaint`            masking (inpainting): :math:`A x = m \odot x`, :math:`m \in \{0, 1\}` (1 = kept)
:class:`AvgPoolDownsample`  :math:`f \times f` average pooling (super-resolution ``sr4`` with ``f = 4``)
:class:`GaussianBlur`       Gaussian blur, circular or zero-padded boundary
:class:`MatrixOperator`     a user's matrix on flat vectors ``(B, d) -> (B, m)``
:class:`FunctionOperator`   a user's pair of callables ``forward``, ``adjoint``
==========================  ===========================================================================

A mask keeps the image's shape (holes read 0) and its noise is drawn on the kept entries only, so it is
the selection of the kept pixels written in image coordinates; its adjoint and pseudo-inverse are itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "LinearOperator",
    "Inpaint",
    "AvgPoolDownsample",
    "GaussianBlur",
    "MatrixOperator",
    "FunctionOperator",
    "gaussian_kernel",
    "check_adjoint",
    "check_noise",
]


class LinearOperator:
    """Base class: subclasses define :meth:`forward` and :meth:`adjoint` (and may override the rest)."""

    #: Tikhonov weight and iterations of the generic :meth:`pseudo_inverse`.
    pinv_eps: float = 1e-3
    pinv_iters: int = 50

    def forward(self, x: Tensor) -> Tensor:
        r""":math:`A x`: ``(B, *event) -> (B, *measured)``."""
        raise NotImplementedError

    def adjoint(self, y: Tensor) -> Tensor:
        r""":math:`A^\top y`: ``(B, *measured) -> (B, *event)``."""
        raise NotImplementedError

    def __call__(self, x: Tensor) -> Tensor:
        return self.forward(x)

    def noise_support(self, y: Tensor) -> Tensor | float:
        """Where measurement noise is drawn (1 everywhere but for masks)."""
        return 1.0

    def measure(self, x: Tensor, sigma: float, *, generator: torch.Generator | None = None) -> Tensor:
        r"""A noisy measurement :math:`y = A x + \sigma n`, :math:`n \sim N(0, I)`; ``(B, *measured)``.

        Args:
            x: ``(B, *event)`` clean signals.
            sigma: noise std :math:`\sigma \ge 0`.
            generator: source of the noise.
        """
        sigma = check_noise(sigma)
        y = self.forward(x)
        if sigma == 0.0:
            return y
        n = torch.randn(
            y.shape, generator=generator, dtype=y.dtype, device=generator.device if generator else None
        )
        return y + sigma * self.noise_support(y) * n.to(y.device)

    def pseudo_inverse(self, y: Tensor) -> Tensor:
        r""":math:`(A^\top A + \epsilon I)^{-1} A^\top y` by conjugate gradients (``pinv_eps``, ``pinv_iters``)."""
        b = self.adjoint(y)
        x = torch.zeros_like(b)
        r = b.clone()
        p = r.clone()
        dims = tuple(range(1, b.dim()))
        rs = (r * r).sum(dims, keepdim=True)
        for _ in range(self.pinv_iters):
            ap = self.adjoint(self.forward(p)) + self.pinv_eps * p
            alpha = rs / (p * ap).sum(dims, keepdim=True).clamp_min(1e-30)
            x = x + alpha * p
            r = r - alpha * ap
            rs_new = (r * r).sum(dims, keepdim=True)
            if float(rs_new.max()) < 1e-20:
                break
            p = r + rs_new / rs.clamp_min(1e-30) * p
            rs = rs_new
        return x


def check_noise(sigma: float) -> float:
    """``sigma`` as a float, refused when negative or not finite."""
    sigma = float(sigma)
    if not (math.isfinite(sigma) and sigma >= 0.0):
        raise ValueError(f"the measurement noise must be a finite std >= 0, got {sigma}; write e.g. 0.05")
    return sigma


def _check_image(x: Tensor, who: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{who} acts on images (B, C, H, W), got shape {tuple(x.shape)}")


class Inpaint(LinearOperator):
    r"""Masking: :math:`A x = m \odot x` with ``mask`` 1 on kept entries, 0 on holes (:math:`A = A^\top = A^+`).

    Args:
        mask: ``(B or 1, *event)`` (broadcast against ``x``) in ``{0, 1}``, 1 = known; e.g. from
            :func:`flowforge.core.masks.half_mask`.

    Example:
        >>> import torch
        >>> op = Inpaint(torch.tensor([[1.0, 0.0, 1.0]]))
        >>> op(torch.tensor([[2.0, 3.0, 4.0]]))
        tensor([[2., 0., 4.]])
    """

    def __init__(self, mask: Tensor) -> None:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("an inpainting mask holds only 0 (hole) and 1 (kept); threshold it first")
        self.mask = mask

    def _m(self, x: Tensor) -> Tensor:
        try:
            torch.broadcast_shapes(self.mask.shape, x.shape)
        except RuntimeError:
            raise ValueError(
                f"mask of shape {tuple(self.mask.shape)} does not fit x of shape {tuple(x.shape)}; "
                "give a mask (B or 1, *event) like the signals"
            ) from None
        return self.mask.to(dtype=x.dtype, device=x.device)

    def forward(self, x: Tensor) -> Tensor:
        return x * self._m(x)

    def adjoint(self, y: Tensor) -> Tensor:
        return y * self._m(y)

    def pseudo_inverse(self, y: Tensor) -> Tensor:
        return y * self._m(y)

    def noise_support(self, y: Tensor) -> Tensor:
        return self._m(y)


class AvgPoolDownsample(LinearOperator):
    r"""Average pooling over ``factor x factor`` blocks: :math:`(B, C, H, W) \to (B, C, H/f, W/f)`.

    The adjoint spreads each low-resolution value over its block divided by :math:`f^2`; since
    :math:`A A^\top = I / f^2`, the pseudo-inverse :math:`A^+ = f^2 A^\top` is nearest-neighbour upsampling.

    Args:
        factor: the pooling factor ``f`` (4 for ``sr4``); ``H`` and ``W`` must be multiples of it.

    Example:
        >>> import torch
        >>> op = AvgPoolDownsample(2)
        >>> op(torch.arange(16.0).reshape(1, 1, 4, 4))
        tensor([[[[ 2.5000,  4.5000],
                  [10.5000, 12.5000]]]])
    """

    def __init__(self, factor: int = 4) -> None:
        if int(factor) != factor or factor < 1:
            raise ValueError(
                f"the downsampling factor must be a whole number >= 1, got {factor}; write e.g. 4"
            )
        self.factor = int(factor)

    def forward(self, x: Tensor) -> Tensor:
        _check_image(x, "AvgPoolDownsample")
        f = self.factor
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(
                f"image size {tuple(x.shape[-2:])} is not a multiple of the factor {f}; crop or pad it first"
            )
        return F.avg_pool2d(x, f)

    def _up(self, y: Tensor) -> Tensor:
        _check_image(y, "AvgPoolDownsample.adjoint")
        f = self.factor
        return y.repeat_interleave(f, -2).repeat_interleave(f, -1)

    def adjoint(self, y: Tensor) -> Tensor:
        return self._up(y) / self.factor**2

    def pseudo_inverse(self, y: Tensor) -> Tensor:
        return self._up(y)


def gaussian_kernel(size: int, std: float, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """A normalised 2-D Gaussian kernel ``(size, size)`` (``size`` odd).

    Example:
        >>> round(float(gaussian_kernel(5, 1.0).sum()), 6)
        1.0
    """
    if int(size) != size or size < 1 or size % 2 == 0:
        raise ValueError(f"the blur kernel size must be an odd whole number, got {size}; write e.g. 9")
    if not std > 0:
        raise ValueError(f"the blur std must be > 0 pixels, got {std}; write e.g. 2.0")
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-0.5 * (r / std) ** 2)
    k = g[:, None] * g[None, :]
    return (k / k.sum()).to(dtype)


class GaussianBlur(LinearOperator):
    r"""Convolution with a Gaussian kernel (or any odd-sized ``kernel``), channel by channel.

    ``boundary="circular"`` wraps around (a circulant :math:`A`, diagonal in Fourier space: the pseudo-inverse
    is a Tikhonov-regularised Fourier division); ``"zero"`` pads with zeros (the adjoint is the transposed
    convolution; the pseudo-inverse uses conjugate gradients). Output has the input's shape.

    Args:
        size: kernel size (odd).
        std: kernel std in pixels.
        boundary: ``"circular"`` or ``"zero"``.
        kernel: a custom ``(size, size)`` kernel instead of the Gaussian.

    Example:
        >>> import torch
        >>> op = GaussianBlur(3, 1.0)
        >>> op(torch.ones(1, 1, 4, 4)).allclose(torch.ones(1, 1, 4, 4))
        True
    """

    def __init__(
        self, size: int = 9, std: float = 2.0, *, boundary: str = "circular", kernel: Tensor | None = None
    ) -> None:
        if boundary not in ("circular", "zero"):
            raise ValueError(f"unknown blur boundary {boundary!r}; choose one of circular, zero")
        if kernel is None:
            kernel = gaussian_kernel(size, std, dtype=torch.float64)
        if kernel.dim() != 2 or kernel.shape[0] != kernel.shape[1] or kernel.shape[0] % 2 == 0:
            raise ValueError(
                f"the blur kernel must be square with an odd size, got shape {tuple(kernel.shape)}"
            )
        self.kernel, self.boundary = kernel, boundary
        self.pad = kernel.shape[0] // 2

    def _k(self, x: Tensor, flip: bool) -> Tensor:
        k = self.kernel.flip(0, 1) if flip else self.kernel
        return k.to(dtype=x.dtype, device=x.device)[None, None].expand(x.shape[1], 1, *k.shape)

    def _conv(self, x: Tensor, flip: bool) -> Tensor:
        _check_image(x, "GaussianBlur")
        p = self.pad
        if self.boundary == "circular":
            if p > min(x.shape[-2:]):
                raise ValueError(
                    f"kernel of size {self.kernel.shape[0]} is larger than the image {tuple(x.shape[-2:])}"
                )
            return F.conv2d(F.pad(x, (p, p, p, p), mode="circular"), self._k(x, flip), groups=x.shape[1])
        if flip:  # adjoint of zero-padded correlation: transposed convolution (= correlation with the flipped kernel)
            return F.conv_transpose2d(x, self._k(x, False), padding=p, groups=x.shape[1])
        return F.conv2d(x, self._k(x, False), padding=p, groups=x.shape[1])

    def forward(self, x: Tensor) -> Tensor:
        return self._conv(x, flip=False)

    def adjoint(self, y: Tensor) -> Tensor:
        return self._conv(y, flip=True)

    def pseudo_inverse(self, y: Tensor) -> Tensor:
        if self.boundary != "circular":
            return super().pseudo_inverse(y)
        _check_image(y, "GaussianBlur")
        h, w = y.shape[-2:]
        # the kernel centred at the origin, wrapped around (a kernel larger than the image adds up)
        off = torch.arange(self.kernel.shape[0], device=y.device) - self.pad
        rows, cols = torch.meshgrid(off % h, off % w, indexing="ij")
        k = torch.zeros(h, w, dtype=y.dtype, device=y.device)
        k.index_put_((rows.reshape(-1), cols.reshape(-1)), self.kernel.to(y).reshape(-1), accumulate=True)
        mult = torch.fft.fft2(k).conj()  # A is a correlation: in Fourier space a product with conj(K)
        xf = torch.fft.fft2(y) * mult.conj() / (mult.abs() ** 2 + self.pinv_eps)
        return torch.fft.ifft2(xf).real


class MatrixOperator(LinearOperator):
    r"""A user's matrix :math:`A` of shape ``(m, d)`` acting on flat vectors ``(B, d) -> (B, m)``.

    The pseudo-inverse is the Moore–Penrose :math:`A^+` (computed once).

    Example:
        >>> import torch
        >>> op = MatrixOperator(torch.tensor([[1.0, 1.0]]))
        >>> op(torch.tensor([[2.0, 3.0]])), op.adjoint(torch.tensor([[1.0]]))
        (tensor([[5.]]), tensor([[1., 1.]]))
    """

    def __init__(self, matrix: Tensor) -> None:
        if matrix.dim() != 2:
            raise ValueError(f"the operator matrix must be (m, d), got shape {tuple(matrix.shape)}")
        self.matrix = matrix
        self._pinv = torch.linalg.pinv(matrix.to(torch.float64)).to(matrix.dtype)

    def _check(self, x: Tensor, n: int, who: str) -> None:
        if x.dim() != 2 or x.shape[1] != n:
            raise ValueError(f"{who} expects (B, {n}), got shape {tuple(x.shape)}")

    def forward(self, x: Tensor) -> Tensor:
        self._check(x, self.matrix.shape[1], "MatrixOperator")
        return x @ self.matrix.to(x).T

    def adjoint(self, y: Tensor) -> Tensor:
        self._check(y, self.matrix.shape[0], "MatrixOperator.adjoint")
        return y @ self.matrix.to(y)

    def pseudo_inverse(self, y: Tensor) -> Tensor:
        self._check(y, self.matrix.shape[0], "MatrixOperator.pseudo_inverse")
        return y @ self._pinv.to(y).T


class FunctionOperator(LinearOperator):
    r"""A user's linear operator from a pair of callables ``forward(x)`` and ``adjoint(y)``.

    The pair must be linear and adjoint to each other (:math:`\langle A x, y\rangle = \langle x, A^\top y\rangle`);
    :func:`check_adjoint` tests that on random inputs. The pseudo-inverse uses conjugate gradients unless
    ``pseudo_inverse`` is given.

    Example:
        >>> import torch
        >>> op = FunctionOperator(lambda x: 2 * x, lambda y: 2 * y)
        >>> op.pseudo_inverse(torch.tensor([[4.0]])).round(decimals=3)
        tensor([[2.]])
    """

    def __init__(
        self,
        forward: Callable[[Tensor], Tensor],
        adjoint: Callable[[Tensor], Tensor],
        pseudo_inverse: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        if not (callable(forward) and callable(adjoint)):
            raise TypeError("FunctionOperator needs two callables: forward(x) -> A x and adjoint(y) -> A^T y")
        self._f, self._a, self._p = forward, adjoint, pseudo_inverse

    def forward(self, x: Tensor) -> Tensor:
        return self._f(x)

    def adjoint(self, y: Tensor) -> Tensor:
        return self._a(y)

    def pseudo_inverse(self, y: Tensor) -> Tensor:
        return self._p(y) if self._p is not None else super().pseudo_inverse(y)


def check_adjoint(op: LinearOperator, x: Tensor, *, generator: torch.Generator | None = None) -> float:
    r"""Relative gap :math:`|\langle A x, y\rangle - \langle x, A^\top y\rangle| / (\|A x\| \|y\|)` at a random
    :math:`y`; near machine precision for a correct pair.

    Example:
        >>> import torch
        >>> check_adjoint(GaussianBlur(5, 1.0, boundary="zero"), torch.randn(2, 1, 8, 8, dtype=torch.float64)) < 1e-12
        True
    """
    ax = op.forward(x)
    y = torch.randn(ax.shape, generator=generator, dtype=ax.dtype).to(ax.device)
    lhs = (ax * y).sum()
    rhs = (x * op.adjoint(y)).sum()
    return float((lhs - rhs).abs() / (ax.norm() * y.norm()).clamp_min(1e-300))
