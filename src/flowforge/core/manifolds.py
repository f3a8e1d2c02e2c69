r"""Riemannian manifolds for flow matching on general geometries: the sphere, the flat torus, SO(3), R^d.

A :class:`Manifold` is embedded in an ambient Euclidean space: a point is a tensor of shape
``(B, *event_shape)`` (the ambient shape, e.g. ``(B, 3)`` for :math:`S^2`, ``(B, 3, 3)`` for
:math:`SO(3)`), a tangent vector at ``x`` is an ambient tensor of the same shape that lies in
:math:`T_x\mathcal M`. Every manifold gives

- ``expmap(x, u)`` / ``logmap(x, y)``: the Riemannian exponential and (minimising) logarithm,
- ``projx(x)``: the closest point of the manifold to an ambient point, ``proju(x, u)``: the
  orthogonal projection of an ambient vector onto :math:`T_x\mathcal M`,
- ``dist(x, y)`` :math:`= \|\log_x y\|_g`, ``geodesic_velocity(x, u, s)``
  :math:`= \tfrac{d}{ds}\exp_x(s u)`,
- ``random_uniform(n, generator=...)`` (normalised Riemannian volume), ``log_volume`` and
  ``uniform_log_prob(x)`` :math:`= -\log \mathrm{vol}(\mathcal M)`,
- ``check_point(x)``: a clear error for a wrong shape or a point off the manifold,
- ``dim`` (intrinsic dimension) and ``event_shape`` (ambient shape of one point).

These are the operations of Riemannian flow matching (Chen & Lipman, "Flow Matching on General
Geometries", ICLR 2024, §3): the geodesic conditional path
:math:`x_t = \exp_{x_0}(\kappa(t) \log_{x_0} x_1)` (:mod:`flowforge.core.geodesic`), the projected
solvers (:mod:`flowforge.core.solvers.riemannian`) and the Riemannian divergence
(:func:`flowforge.core.likelihood.riemannian_log_prob`). The metric is always the one induced by the
ambient Frobenius inner product, up to a constant factor stated per class (a constant factor changes
distances and the volume, never a divergence).

Example:
    >>> import torch
    >>> s = Sphere(2)
    >>> x = s.random_uniform(4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    >>> u = s.proju(x, torch.ones_like(x))
    >>> y = s.expmap(x, 0.5 * u)
    >>> bool(torch.allclose(s.logmap(x, y), 0.5 * u)), round(s.log_volume, 6)  # log(4 pi)
    (True, 2.531024)
"""

from __future__ import annotations

import math
from typing import Protocol, final, runtime_checkable

import torch
from torch import Tensor

__all__ = [
    "SO3",
    "Euclidean",
    "FlatTorus",
    "Manifold",
    "Sphere",
    "StandardNormalSource",
    "UniformSource",
    "jvp_geodesic_velocity",
    "so3_exp",
    "so3_hat",
    "so3_log",
    "so3_vee",
]

_TWO_PI = 2.0 * math.pi


@runtime_checkable
class Manifold(Protocol):
    """What the Riemannian parts need from a manifold (see the module docstring for the maths).

    Attributes:
        dim: intrinsic dimension :math:`d`.
        event_shape: ambient shape of one point (``(d + 1,)`` for :math:`S^d`, ``(3, 3)`` for SO(3)).
        log_volume: :math:`\\log \\mathrm{vol}(\\mathcal M)` (``inf`` when the volume is infinite).
    """

    dim: int
    event_shape: tuple[int, ...]

    @property
    def log_volume(self) -> float: ...

    def expmap(self, x: Tensor, u: Tensor) -> Tensor:
        """:math:`\\exp_x(u)`, ``(B, *event)``."""
        ...

    def logmap(self, x: Tensor, y: Tensor) -> Tensor:
        """:math:`\\log_x(y)`, a tangent vector at ``x``, ``(B, *event)``."""
        ...

    def projx(self, x: Tensor) -> Tensor:
        """The closest point of the manifold to the ambient point ``x``."""
        ...

    def proju(self, x: Tensor, u: Tensor) -> Tensor:
        """Orthogonal projection of the ambient vector ``u`` onto :math:`T_x\\mathcal M`."""
        ...

    def dist(self, x: Tensor, y: Tensor) -> Tensor:
        """Geodesic distance, ``(B,)``."""
        ...

    def geodesic_velocity(self, x: Tensor, u: Tensor, s: Tensor) -> Tensor:
        """:math:`\\frac{d}{ds}\\exp_x(s u)` at ``s`` (``(B,)``), ``(B, *event)``."""
        ...

    def random_uniform(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """``n`` points drawn from the normalised Riemannian volume, ``(n, *event)``."""
        ...

    def uniform_log_prob(self, x: Tensor) -> Tensor:
        """Log-density of the uniform law w.r.t. the Riemannian volume, ``(B,)``."""
        ...

    def check_point(self, x: Tensor, atol: float | None = None, name: str = "x") -> None:
        """Raise a ``ValueError`` saying what is wrong if ``x`` is not a batch of points on the manifold."""
        ...


# --------------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------------


def _bshape(s: Tensor, x: Tensor, event_dims: int) -> Tensor:
    """``s`` of shape ``(B,)`` (or broadcastable) reshaped to broadcast against ``x`` ``(B, *event)``."""
    s = torch.as_tensor(s, dtype=x.dtype, device=x.device)
    return s.reshape(s.shape + (1,) * (x.dim() - s.dim())) if s.dim() else s


def _sinc(a: Tensor) -> Tensor:
    r""":math:`\sin a / a`, with its Taylor series :math:`1 - a^2/6 + a^4/120` for :math:`|a| < 10^{-3}`."""
    small = a.abs() < 1e-3
    safe = torch.where(small, torch.ones_like(a), a)
    a2 = a * a
    return torch.where(small, 1.0 - a2 / 6.0 + a2 * a2 / 120.0, torch.sin(safe) / safe)


def _default_atol(x: Tensor) -> float:
    return 1e-4 if x.dtype in (torch.float16, torch.bfloat16, torch.float32) else 1e-8


def _check_tensor(x: Tensor, event_shape: tuple[int, ...], what: str, name: str) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        got = type(x).__name__ if not isinstance(x, Tensor) else x.dtype
        raise ValueError(f"{name} must be a floating-point tensor of points on {what}, got {got}")
    n = len(event_shape)
    if x.dim() < n + 1 or tuple(x.shape[-n:]) != tuple(event_shape):
        ev = ", ".join(map(str, event_shape))
        raise ValueError(
            f"{name} has shape {tuple(x.shape)}, but points on {what} have shape (B, {ev}); "
            f"write x.reshape(-1, {ev}) for a flat batch"
        )
    if not bool(torch.isfinite(x.detach()).all()):
        raise ValueError(f"{name} contains NaN or inf; points on {what} must be finite")


def jvp_geodesic_velocity(manifold: Manifold, x: Tensor, u: Tensor, s: Tensor) -> Tensor:
    r""":math:`\frac{d}{ds}\exp_x(s u)` at ``s`` (``(B,)``) by one forward-mode JVP through ``expmap``.

    The fallback for a manifold without a closed-form geodesic velocity; ``(B, *event)``.

    Example:
        >>> import torch
        >>> s = Sphere(2)
        >>> x, u = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.0, 0.0]])
        >>> t = torch.tensor([0.3])
        >>> bool(torch.allclose(jvp_geodesic_velocity(s, x, u, t), s.geodesic_velocity(x, u, t)))
        True
    """
    sb = _bshape(s, x, len(manifold.event_shape))
    _, dx = torch.func.jvp(lambda r: manifold.expmap(x, r * u), (sb,), (torch.ones_like(sb),))
    return dx


class _Base:
    """Defaults shared by the concrete manifolds (not part of the protocol)."""

    dim: int
    event_shape: tuple[int, ...]

    @property
    def log_volume(self) -> float:  # pragma: no cover - overridden
        raise NotImplementedError

    def _edims(self) -> tuple[int, ...]:
        return tuple(range(-len(self.event_shape), 0))

    def expmap(self, x: Tensor, u: Tensor) -> Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def logmap(self, x: Tensor, y: Tensor) -> Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def norm(self, x: Tensor, u: Tensor) -> Tensor:
        """Riemannian norm :math:`\\|u\\|_g` of a tangent vector at ``x``, ``(B,)``."""
        return u.square().sum(self._edims()).sqrt()

    def dist(self, x: Tensor, y: Tensor) -> Tensor:
        """:math:`d(x, y) = \\|\\log_x y\\|_g`, ``(B,)``."""
        return self.norm(x, self.logmap(x, y))

    def geodesic_velocity(self, x: Tensor, u: Tensor, s: Tensor) -> Tensor:
        """:math:`\\frac{d}{ds}\\exp_x(s u)` by :func:`jvp_geodesic_velocity` (classes override it with a
        closed form)."""
        return jvp_geodesic_velocity(self, x, u, s)

    def uniform_log_prob(self, x: Tensor) -> Tensor:
        """:math:`-\\log \\mathrm{vol}(\\mathcal M)` for every point, ``(B,)``."""
        lead = x.shape[: x.dim() - len(self.event_shape)]
        return torch.full(lead, -self.log_volume, dtype=x.dtype, device=x.device)

    def off_manifold(self, x: Tensor) -> Tensor:
        """``max |projx(x) - x|`` over the batch (0 for points on the manifold); a 0-dim tensor."""
        return (self.projx(x) - x).abs().max() if x.numel() else x.new_zeros(())

    def projx(self, x: Tensor) -> Tensor:  # pragma: no cover - overridden
        raise NotImplementedError


# --------------------------------------------------------------------------------------------------
# Sphere
# --------------------------------------------------------------------------------------------------


@final
class Sphere(_Base):
    r"""The unit sphere :math:`S^d = \{x \in \mathbb R^{d+1} : \|x\| = 1\}` with the round metric.

    .. math::
        \exp_x(u) = \cos(\|u\|)\, x + \frac{\sin\|u\|}{\|u\|}\, u,\qquad
        \log_x(y) = \frac{\theta}{\|w\|}\, w,\ \ w = y - \langle x, y\rangle x,\ \
        \theta = \operatorname{atan2}(\|w\|, \langle x, y\rangle) = d(x, y),

    ``projx(x) = x / |x|``, ``proju(x, u) = u - <x, u> x``, volume
    :math:`2\pi^{(d+1)/2} / \Gamma(\tfrac{d+1}{2})` (:math:`4\pi` for :math:`S^2`); uniform points are
    normalised Gaussians. Small angles use Taylor series of :math:`\sin a / a` and :math:`\theta / \sin\theta`.
    At the antipode the logarithm is not unique: ``logmap`` then returns a short vector of no meaning.

    Args:
        d: intrinsic dimension (2 for the globe).

    Example:
        >>> import torch
        >>> s = Sphere(2)
        >>> x, y = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[1.0, 0.0, 0.0]])
        >>> s.logmap(x, y), s.dist(x, y)
        (tensor([[1.5708, 0.0000, 0.0000]]), tensor([1.5708]))
    """

    def __init__(self, d: int = 2) -> None:
        if isinstance(d, bool) or int(d) != d or d < 1:
            raise ValueError(f"Sphere needs an intrinsic dimension d >= 1, got {d!r}; e.g. Sphere(2) for S^2")
        self.dim = int(d)
        self.event_shape = (self.dim + 1,)

    def __repr__(self) -> str:
        return f"Sphere({self.dim})"

    @property
    def log_volume(self) -> float:
        """:math:`\\log\\big(2\\pi^{(d+1)/2}/\\Gamma(\\tfrac{d+1}{2})\\big)`."""
        k = 0.5 * (self.dim + 1)
        return math.log(2.0) + k * math.log(math.pi) - math.lgamma(k)

    def expmap(self, x: Tensor, u: Tensor) -> Tensor:
        """:math:`\\cos(\\|u\\|) x + \\mathrm{sinc}(\\|u\\|) u`."""
        n = u.norm(dim=-1, keepdim=True)
        return torch.cos(n) * x + _sinc(n) * u

    def logmap(self, x: Tensor, y: Tensor) -> Tensor:
        """:math:`\\theta\\, w / \\|w\\|` with :math:`w = y - \\langle x, y\\rangle x`."""
        c = (x * y).sum(-1, keepdim=True)
        w = y - c * x
        s = w.norm(dim=-1, keepdim=True)
        theta = torch.atan2(s, c)
        small = s < 1e-4
        safe = torch.where(small, torch.ones_like(s), s)
        s2 = s * s  # theta / sin(theta) = asin(s) / s = 1 + s^2/6 + 3 s^4/40 near theta = 0
        factor = torch.where(small, 1.0 + s2 / 6.0 + 0.075 * s2 * s2, theta / safe)
        return factor * w

    def dist(self, x: Tensor, y: Tensor) -> Tensor:
        """:math:`2\\operatorname{atan2}(\\|x - y\\|, \\|x + y\\|)` (stable at 0 and at the antipode)."""
        return 2.0 * torch.atan2((x - y).norm(dim=-1), (x + y).norm(dim=-1))

    def projx(self, x: Tensor) -> Tensor:
        """:math:`x / \\|x\\|`."""
        return x / x.norm(dim=-1, keepdim=True)

    def proju(self, x: Tensor, u: Tensor) -> Tensor:
        """:math:`u - \\langle x, u\\rangle x`."""
        return u - (x * u).sum(-1, keepdim=True) * x

    def geodesic_velocity(self, x: Tensor, u: Tensor, s: Tensor) -> Tensor:
        """:math:`\\frac{d}{ds}\\exp_x(su) = -\\|u\\|\\sin(s\\|u\\|)\\, x + \\cos(s\\|u\\|)\\, u` (no division)."""
        n = u.norm(dim=-1, keepdim=True)
        a = _bshape(s, x, 1) * n
        return -(n * torch.sin(a)) * x + torch.cos(a) * u

    def random_uniform(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Normalised standard Gaussians in :math:`\\mathbb R^{d+1}`: uniform on :math:`S^d`."""
        z = torch.randn(n, self.dim + 1, generator=generator, dtype=dtype, device=device)
        return z / z.norm(dim=-1, keepdim=True)

    def check_point(self, x: Tensor, atol: float | None = None, name: str = "x") -> None:
        """Refuse a wrong shape, NaN/inf, or ``| |x| - 1 | > atol``."""
        _check_tensor(x, self.event_shape, f"the sphere S^{self.dim}", name)
        x = x.detach()
        atol = _default_atol(x) if atol is None else atol
        err = float((x.norm(dim=-1) - 1).abs().max()) if x.numel() else 0.0
        if err > atol:
            raise ValueError(
                f"{name} is off the sphere S^{self.dim}: max | |x| - 1 | = {err:.3g} > {atol:g}; normalise "
                "the points first, e.g. x / x.norm(dim=-1, keepdim=True) (Sphere.projx)"
            )


# --------------------------------------------------------------------------------------------------
# Flat torus
# --------------------------------------------------------------------------------------------------


@final
class FlatTorus(_Base):
    r"""The flat torus :math:`\mathbb T^d = (\mathbb R / 2\pi\mathbb Z)^d`, points as angles in :math:`[0, 2\pi)^d`.

    .. math::
        \exp_x(u) = (x + u) \bmod 2\pi,\qquad \log_x(y) = \big((y - x + \pi) \bmod 2\pi\big) - \pi,

    the Euclidean metric of the angles (so every tangent space is :math:`\mathbb R^d`, ``proju`` is
    the identity and geodesics are straight lines), volume :math:`(2\pi)^d`.

    Args:
        d: number of angles.

    Example:
        >>> import torch
        >>> t = FlatTorus(2)
        >>> t.logmap(torch.tensor([[0.1, 3.0]]), torch.tensor([[6.2, 3.5]]))  # the short way round
        tensor([[-0.1832,  0.5000]])
    """

    def __init__(self, d: int = 2) -> None:
        if isinstance(d, bool) or int(d) != d or d < 1:
            raise ValueError(f"FlatTorus needs d >= 1 angles, got {d!r}; e.g. FlatTorus(2) for (phi, psi)")
        self.dim = int(d)
        self.event_shape = (self.dim,)

    def __repr__(self) -> str:
        return f"FlatTorus({self.dim})"

    @property
    def log_volume(self) -> float:
        """:math:`d \\log 2\\pi`."""
        return self.dim * math.log(_TWO_PI)

    def projx(self, x: Tensor) -> Tensor:
        """Wrap to :math:`[0, 2\\pi)` (a value that rounds to :math:`2\\pi` becomes 0)."""
        r = torch.remainder(x, _TWO_PI)
        return torch.where(r >= _TWO_PI, torch.zeros_like(r), r)

    def proju(self, x: Tensor, u: Tensor) -> Tensor:
        """The identity: every ambient vector is tangent."""
        return u

    def expmap(self, x: Tensor, u: Tensor) -> Tensor:
        """:math:`(x + u) \\bmod 2\\pi`."""
        return self.projx(x + u)

    def logmap(self, x: Tensor, y: Tensor) -> Tensor:
        """The shortest signed angle differences, in :math:`[-\\pi, \\pi)`."""
        return torch.remainder(y - x + math.pi, _TWO_PI) - math.pi

    def geodesic_velocity(self, x: Tensor, u: Tensor, s: Tensor) -> Tensor:
        """Constant speed: ``u``."""
        return u

    def random_uniform(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Independent uniform angles in :math:`[0, 2\\pi)`."""
        return self.projx(_TWO_PI * torch.rand(n, self.dim, generator=generator, dtype=dtype, device=device))

    def check_point(self, x: Tensor, atol: float | None = None, name: str = "x") -> None:
        """Refuse a wrong shape, NaN/inf, or angles outside :math:`[0, 2\\pi]` (by more than ``atol``)."""
        _check_tensor(x, self.event_shape, f"the flat torus T^{self.dim}", name)
        x = x.detach()
        atol = _default_atol(x) if atol is None else atol
        if x.numel() and (float(x.min()) < -atol or float(x.max()) > _TWO_PI + atol):
            raise ValueError(
                f"{name} holds angles in [{float(x.min()):.4g}, {float(x.max()):.4g}], outside [0, 2 pi); wrap "
                "them first with FlatTorus.projx(x) (= x % (2 * math.pi)); angles in (-pi, pi] wrap too"
            )


# --------------------------------------------------------------------------------------------------
# SO(3)
# --------------------------------------------------------------------------------------------------


def so3_hat(w: Tensor) -> Tensor:
    r"""The skew matrix :math:`\hat\omega` with :math:`\hat\omega v = \omega \times v`; ``(..., 3) -> (..., 3, 3)``."""
    z = torch.zeros_like(w[..., 0])
    x, y, q = w[..., 0], w[..., 1], w[..., 2]
    return torch.stack(
        [torch.stack([z, -q, y], -1), torch.stack([q, z, -x], -1), torch.stack([-y, x, z], -1)], -2
    )


def so3_vee(a: Tensor) -> Tensor:
    """Inverse of :func:`so3_hat` on skew matrices, ``(..., 3, 3) -> (..., 3)``."""
    return torch.stack([a[..., 2, 1], a[..., 0, 2], a[..., 1, 0]], -1)


def so3_exp(w: Tensor) -> Tensor:
    r"""Rodrigues' formula :math:`\exp(\hat\omega) = I + \frac{\sin\theta}{\theta}\hat\omega
    + \frac{1 - \cos\theta}{\theta^2}\hat\omega^2`, :math:`\theta = \|\omega\|`; ``(..., 3) -> (..., 3, 3)``.

    :math:`(1 - \cos\theta)/\theta^2` is evaluated as :math:`\tfrac12\,\mathrm{sinc}(\theta/2)^2`, exact
    and stable at :math:`\theta \to 0`.
    """
    theta = w.norm(dim=-1)[..., None, None]
    k = so3_hat(w)
    eye = torch.eye(3, dtype=w.dtype, device=w.device).expand(k.shape)
    return eye + _sinc(theta) * k + 0.5 * _sinc(0.5 * theta).square() * (k @ k)


def so3_log(r: Tensor) -> Tensor:
    r"""Rotation vector :math:`\omega` of a rotation matrix, :math:`\|\omega\| = \theta \in [0, \pi]`; ``(..., 3, 3) -> (..., 3)``.

    With :math:`c = (\operatorname{tr} R - 1)/2 = \cos\theta` and
    :math:`a = \mathrm{vee}(R - R^\top)/2 = \sin\theta\, n`, :math:`\theta = \operatorname{atan2}(\|a\|, c)`.
    For :math:`c \ge 0` (:math:`\theta \le \pi/2`), :math:`\omega = (\theta/\sin\theta)\, a` with the series
    :math:`\theta/\sin\theta = 1 + s^2/6 + 3s^4/40` at small :math:`s = \|a\|`. For :math:`c < 0` the axis
    comes from the symmetric part, :math:`n n^\top = \big((R + R^\top)/2 - c I\big)/(1 - c)` (its
    largest-diagonal column), with the sign of :math:`a`; this stays accurate up to :math:`\theta = \pi`,
    where either sign is a valid logarithm.
    """
    tr = r[..., 0, 0] + r[..., 1, 1] + r[..., 2, 2]
    c = (0.5 * (tr - 1.0)).clamp(-1.0, 1.0)
    a = 0.5 * so3_vee(r - r.transpose(-1, -2))
    s = a.norm(dim=-1)
    theta = torch.atan2(s, c)
    # theta <= pi / 2
    small = s < 1e-4
    safe = torch.where(small, torch.ones_like(s), s)
    s2 = s * s
    factor = torch.where(small, 1.0 + s2 / 6.0 + 0.075 * s2 * s2, theta / safe)
    w_regular = factor[..., None] * a
    # theta > pi / 2: axis from the symmetric part
    big = c < 0
    denom = torch.where(big, 1.0 - c, torch.ones_like(c))
    eye = torch.eye(3, dtype=r.dtype, device=r.device)
    b = (0.5 * (r + r.transpose(-1, -2)) - c[..., None, None] * eye) / denom[..., None, None]
    diag = torch.diagonal(b, dim1=-2, dim2=-1)
    k = diag.argmax(-1)
    col = torch.gather(b, -1, k[..., None, None].expand(*b.shape[:-1], 1))[..., 0]
    bkk = torch.gather(diag, -1, k[..., None])[..., 0].clamp_min(1e-30)
    n = col / bkk.sqrt()[..., None]
    sign = torch.where((n * a).sum(-1) < 0, -torch.ones_like(c), torch.ones_like(c))
    w_big = (sign * theta)[..., None] * n
    return torch.where(big[..., None], w_big, w_regular)


def _skew(a: Tensor) -> Tensor:
    return 0.5 * (a - a.transpose(-1, -2))


@final
class SO3(_Base):
    r"""The rotation group :math:`SO(3) = \{R \in \mathbb R^{3\times 3} : R^\top R = I, \det R = 1\}`.

    Tangent vectors at :math:`R` are :math:`U = R\hat\omega` (ambient ``(3, 3)`` matrices). The metric is
    the bi-invariant :math:`\langle U, V\rangle_R = \tfrac12 \operatorname{tr}(U^\top V)` (half the ambient
    Frobenius product), so :math:`\|R\hat\omega\| = \|\omega\|` and the geodesic distance is the rotation
    angle :math:`d(R, Q) = \|\log(R^\top Q)\| \in [0, \pi]`. With it SO(3) is isometric to
    :math:`S^3(2)/\pm 1` and has volume :math:`\tfrac12 \cdot 2\pi^2 \cdot 2^3 = 8\pi^2`; the uniform
    (Haar) density is :math:`1/(8\pi^2)`.

    .. math::
        \exp_R(U) = R \exp(R^\top U),\qquad \log_R(Q) = R\, \widehat{\log(R^\top Q)},

    with Rodrigues' formula (:func:`so3_exp`) and its inverse (:func:`so3_log`, careful at 0 and
    :math:`\pi`). ``proju(R, U) = R\,\mathrm{skew}(R^\top U)``; ``projx`` is the polar factor (SVD,
    determinant fixed to +1); Haar samples are unit quaternions (normalised Gaussians in
    :math:`\mathbb R^4`) turned into matrices.

    Example:
        >>> import torch
        >>> g = SO3()
        >>> r = g.random_uniform(3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        >>> u = g.proju(r, torch.randn(3, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
        >>> bool(torch.allclose(g.logmap(r, g.expmap(r, 0.3 * u)), 0.3 * u)), round(g.log_volume, 5)
        (True, 4.3689)
    """

    dim = 3
    event_shape = (3, 3)

    def __repr__(self) -> str:
        return "SO3()"

    @property
    def log_volume(self) -> float:
        """:math:`\\log 8\\pi^2` (the angle metric; see the class docstring)."""
        return math.log(8.0 * math.pi**2)

    def norm(self, x: Tensor, u: Tensor) -> Tensor:
        """:math:`\\|U\\|_g = \\|U\\|_F / \\sqrt 2`."""
        return u.square().sum((-2, -1)).div(2.0).sqrt()

    def expmap(self, x: Tensor, u: Tensor) -> Tensor:
        """:math:`R \\exp(R^\\top U)`."""
        return x @ so3_exp(so3_vee(_skew(x.transpose(-1, -2) @ u)))

    def logmap(self, x: Tensor, y: Tensor) -> Tensor:
        """:math:`R\\,\\widehat{\\log(R^\\top Q)}`."""
        return x @ so3_hat(so3_log(x.transpose(-1, -2) @ y))

    def dist(self, x: Tensor, y: Tensor) -> Tensor:
        """The angle of :math:`R^\\top Q`."""
        return so3_log(x.transpose(-1, -2) @ y).norm(dim=-1)

    def projx(self, x: Tensor) -> Tensor:
        """The nearest rotation (Frobenius): :math:`U \\operatorname{diag}(1, 1, \\det UV^\\top) V^\\top`."""
        u, _, vh = torch.linalg.svd(x)
        d = torch.det(u @ vh)
        u = torch.cat([u[..., :2], u[..., 2:] * d[..., None, None]], dim=-1)
        return u @ vh

    def proju(self, x: Tensor, u: Tensor) -> Tensor:
        """:math:`R\\,\\mathrm{skew}(R^\\top U)`."""
        return x @ _skew(x.transpose(-1, -2) @ u)

    def geodesic_velocity(self, x: Tensor, u: Tensor, s: Tensor) -> Tensor:
        """:math:`\\frac{d}{ds} R\\exp(s\\hat\\omega) = R \\exp(s\\hat\\omega)\\,\\hat\\omega`, :math:`\\hat\\omega = R^\\top U`."""
        k = _skew(x.transpose(-1, -2) @ u)
        sb = _bshape(s, x, 2)
        return x @ so3_exp(so3_vee(sb * k)) @ k

    def random_uniform(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Haar-distributed rotations from uniform unit quaternions ``(w, x, y, z)``."""
        q = torch.randn(n, 4, generator=generator, dtype=dtype, device=device)
        q = q / q.norm(dim=-1, keepdim=True)
        w, x, y, z = q.unbind(-1)
        rows = [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
        return torch.stack([torch.stack(r, -1) for r in rows], -2)

    def check_point(self, x: Tensor, atol: float | None = None, name: str = "x") -> None:
        """Refuse a wrong shape, NaN/inf, :math:`\\|R^\\top R - I\\| > atol` or :math:`\\det R < 0`."""
        _check_tensor(x, self.event_shape, "SO(3)", name)
        x = x.detach()
        if not x.numel():
            return
        atol = _default_atol(x) if atol is None else atol
        eye = torch.eye(3, dtype=x.dtype, device=x.device)
        err = float((x.transpose(-1, -2) @ x - eye).abs().max())
        if err > atol:
            raise ValueError(
                f"{name} is not a batch of rotation matrices: max |R^T R - I| = {err:.3g} > {atol:g}; "
                "orthonormalise first with SO3().projx(x)"
            )
        if float(torch.det(x).min()) < 0:
            raise ValueError(
                f"{name} holds reflections (det R = -1), which are not in SO(3); flip one column, or use "
                "SO3().projx(x)"
            )


# --------------------------------------------------------------------------------------------------
# Euclidean
# --------------------------------------------------------------------------------------------------


@final
class Euclidean(_Base):
    r"""Flat :math:`\mathbb R^d` (for completeness): :math:`\exp_x u = x + u`, :math:`\log_x y = y - x`.

    Infinite volume: there is no uniform law (pass a source such as a standard normal instead).

    Example:
        >>> import torch
        >>> Euclidean(2).dist(torch.zeros(1, 2), torch.tensor([[3.0, 4.0]]))
        tensor([5.])
    """

    def __init__(self, d: int = 2) -> None:
        if isinstance(d, bool) or int(d) != d or d < 1:
            raise ValueError(f"Euclidean needs d >= 1, got {d!r}")
        self.dim = int(d)
        self.event_shape = (self.dim,)

    def __repr__(self) -> str:
        return f"Euclidean({self.dim})"

    @property
    def log_volume(self) -> float:
        """``inf``."""
        return math.inf

    def expmap(self, x: Tensor, u: Tensor) -> Tensor:
        """:math:`x + u`."""
        return x + u

    def logmap(self, x: Tensor, y: Tensor) -> Tensor:
        """:math:`y - x`."""
        return y - x

    def projx(self, x: Tensor) -> Tensor:
        """The identity."""
        return x

    def proju(self, x: Tensor, u: Tensor) -> Tensor:
        """The identity."""
        return u

    def geodesic_velocity(self, x: Tensor, u: Tensor, s: Tensor) -> Tensor:
        """``u``."""
        return u

    def random_uniform(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Refused: R^d has no uniform probability law."""
        raise ValueError(
            "Euclidean space has infinite volume and no uniform law; give the model a source such as "
            "source=StandardNormalSource(d) instead of the uniform one"
        )

    def check_point(self, x: Tensor, atol: float | None = None, name: str = "x") -> None:
        """Refuse a wrong shape or NaN/inf."""
        _check_tensor(x, self.event_shape, f"R^{self.dim}", name)


# --------------------------------------------------------------------------------------------------
# Source distributions
# --------------------------------------------------------------------------------------------------


@final
class UniformSource:
    r"""The uniform law on a compact manifold (normalised Riemannian volume), a flow's source at t=0.

    ``sample(n, generator=..., dtype=..., device=...) -> (n, *event)``; ``log_prob(x)``
    :math:`= -\log\mathrm{vol}(\mathcal M)`, ``(B,)``.

    Example:
        >>> import torch
        >>> src = UniformSource(FlatTorus(2))
        >>> src.sample(3, generator=torch.Generator().manual_seed(0)).shape, round(float(src.log_prob(torch.zeros(1, 2))[0]), 4)
        (torch.Size([3, 2]), -3.6758)
    """

    def __init__(self, manifold: Manifold) -> None:
        if not math.isfinite(manifold.log_volume):
            raise ValueError(
                f"{manifold!r} has infinite volume, so no uniform law; use source=StandardNormalSource(d)"
            )
        self.manifold = manifold

    def __repr__(self) -> str:
        return f"UniformSource({self.manifold!r})"

    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """``n`` uniform points, ``(n, *event)``."""
        return self.manifold.random_uniform(n, generator=generator, dtype=dtype, device=device)

    def log_prob(self, x: Tensor) -> Tensor:
        """:math:`-\\log\\mathrm{vol}(\\mathcal M)`, ``(B,)``."""
        return self.manifold.uniform_log_prob(x)


@final
class StandardNormalSource:
    r"""The standard normal law on :math:`\mathbb R^d` (the source for :class:`Euclidean`).

    Example:
        >>> import torch
        >>> round(float(StandardNormalSource(2).log_prob(torch.zeros(1, 2))[0]), 4)  # -log(2 pi)
        -1.8379
    """

    def __init__(self, d: int) -> None:
        self.dim = int(d)

    def __repr__(self) -> str:
        return f"StandardNormalSource({self.dim})"

    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """``(n, d)`` standard normal points."""
        return torch.randn(n, self.dim, generator=generator, dtype=dtype, device=device)

    def log_prob(self, x: Tensor) -> Tensor:
        """:math:`-\\tfrac12\\|x\\|^2 - \\tfrac d2 \\log 2\\pi`, ``(B,)``."""
        return -0.5 * x.square().sum(-1) - 0.5 * self.dim * math.log(_TWO_PI)
