"""Matrix-free linear algebra on ``torch.func``: Hessian-vector products, power iteration,
Jacobian products of a map and conjugate gradients.

Everything here works on batches of independent problems: the leading dimension indexes
samples, and a scalar function summed over the batch has a block-diagonal Hessian, so one
product serves every sample at once (as VAT's power iteration needs). Norms, inner products and
Rayleigh quotients are per sample.

- :func:`hvp`: ``H v`` for the Hessian ``H`` of a scalar function in its input,
  forward-over-reverse (``jvp`` of ``grad``), or reverse-over-reverse (``vjp`` of ``grad``,
  ``H`` is symmetric) for operations without forward-mode rules.
- :func:`power_iteration`: the top eigenvector and eigenvalue of a symmetric positive
  semi-definite operator, per sample; :func:`power_steps` is its loop, which every power
  iteration of the library (VAT, TNAR, convolution operator norms) runs.
- :func:`jvp_map`, :func:`vjp_map`, :func:`gram_map`: ``J v``, ``Jᵀ u`` and ``JᵀJ v`` for the
  Jacobian ``J`` of a map (a manifold chart's decoder) at a point.
- :func:`conjugate_gradient`: a few CG iterations on ``A x = b`` for a symmetric positive
  definite operator, per sample; :func:`gram_solve` for ``A = JᵀJ``, which also returns ``J x``.
- :func:`detached_parameters`: a module whose parameters are constants for the body, so that a
  transform in the input does not reach (or record a graph to) the weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from einops import reduce
from torch import Tensor, nn
from torch.func import grad, jvp, vjp

Operator = Callable[[Tensor], Tensor]
HVP_MODES = ("forward", "reverse", "auto")


def per_sample(s: Tensor, like: Tensor) -> Tensor:
    """Per-sample scalars ``(B,)`` viewed to broadcast against ``like`` ``(B, ...)``."""
    return s.view(-1, *[1] * (like.dim() - 1))


def per_sample_dot(a: Tensor, b: Tensor) -> Tensor:
    """``⟨a_i, b_i⟩`` for every sample i: shape ``(B,)``."""
    return (a * b).flatten(1).sum(1)


def unit_l2(g: Tensor) -> Tensor:
    """``g/‖g‖₂`` per sample, 0 where ``g = 0``, without overflow or underflow: computed as
    ``s/‖s‖₂`` with ``s = g/max|g|`` (entries in ``[−1, 1]``, so ``‖s‖₂ ∈ [1, √d]``). Squaring g
    itself overflows for large gradients (float16: any entry above 256) and underflows for small
    ones (float16: below 2⁻¹²), where the step would silently vanish. A sample with a NaN or
    inf entry comes out non-finite."""
    tiny = torch.finfo(g.dtype).tiny
    peak = reduce(g.abs(), "b ... -> b", "max")  # (B,)
    s = g / per_sample(peak.clamp_min(tiny), g)
    n = reduce(s.square(), "b ... -> b", "sum").sqrt()
    return s * per_sample(torch.where(n > 0, 1.0 / n.clamp_min(tiny), 0.0), s)


def per_sample_normalize(v: Tensor, eps: float = 0.0) -> Tensor:
    """``v_i / ‖v_i‖₂`` for every sample whose norm exceeds ``eps``; the others (a zero sample, by
    default) are returned as they are. The unit vectors are exact however small or large ``v_i``
    is (:func:`unit_l2`: squaring v itself underflows or overflows, which gave
    a vector shorter than 1, or 0)."""
    unit = unit_l2(v)
    if eps <= 0:
        return unit  # a zero sample stays zero
    peak = v.flatten(1).abs().amax(1)
    norm = peak * per_sample_dot(unit, v / per_sample(peak.clamp_min(torch.finfo(v.dtype).tiny), v))
    return torch.where(per_sample(norm > eps, v), unit, v)


@contextmanager
def detached_parameters(model: nn.Module) -> Iterator[None]:
    """Run the body with every parameter of ``model`` replaced by its detached value (same
    storage, no autograd history), and put the very same ``nn.Parameter`` objects back on exit,
    also when the body raises.

    Each module is visited once, and each of its parameter slots is swapped once, so aliases are
    safe: a submodule registered under two names, or one parameter shared by two modules.
    ``torch.func.functional_call`` with a name-keyed dict is not: it swaps an aliased submodule's
    slot once per name, saves its own replacement as the "original" on the second swap, and
    leaves a plain tensor in place of the parameter (which the optimizer then never updates).
    """
    slots = [(m, name, p) for m in model.modules() for name, p in m._parameters.items() if p is not None]
    try:
        for m, name, p in slots:
            m._parameters[name] = p.detach()
        yield
    finally:
        for m, name, p in slots:
            m._parameters[name] = p


def hvp(f: Callable[[Tensor], Tensor], x: Tensor, v: Tensor, *, mode: str = "auto") -> Tensor:
    """``∇²f(x) · v`` for a scalar function ``f`` of a tensor ``x``.

    ``mode="forward"`` differentiates ``grad(f)`` forward along ``v`` (one forward-mode pass
    through a reverse pass: the cheapest); ``"reverse"`` differentiates it backward (``H`` is
    symmetric, so ``vjp`` gives ``Hv`` too), for operations forward mode lacks; ``"auto"`` tries
    forward and falls back to reverse only on torch's "no forward-mode rule" error
    (:func:`missing_forward_rule`); any other error is raised.
    """
    if mode not in HVP_MODES:
        raise ValueError(f"mode must be one of {HVP_MODES}, got {mode!r}")
    if v.shape != x.shape:
        raise ValueError(f"v must have x's shape {tuple(x.shape)}, got {tuple(v.shape)}")
    g = grad(f)
    if mode != "reverse":
        try:
            return jvp(g, (x,), (v,))[1]
        except (NotImplementedError, RuntimeError) as err:
            if mode == "forward" or not missing_forward_rule(err):
                raise  # a genuine error (in the user's model, say) is never retried
    _, pullback = vjp(g, x)
    return pullback(v)[0]


# What torch raises for an operation without a forward-mode derivative: NotImplementedError
# (RuntimeError in older releases) "Trying to use forward AD with <op> that does not support it",
# and for a custom autograd.Function without ``jvp``: "You must implement the jvp function for
# custom autograd.Function to use it with forward mode AD."
_NO_FORWARD_RULE = ("Trying to use forward AD with", "to use it with forward mode AD")


def missing_forward_rule(err: BaseException) -> bool:
    """Whether ``err`` is torch's error for an operation that has no forward-mode (``jvp``)
    rule, the one case where :func:`hvp` falls back to reverse mode."""
    return isinstance(err, (NotImplementedError, RuntimeError)) and any(m in str(err) for m in _NO_FORWARD_RULE)


def missing_double_backward(err: BaseException) -> bool:
    """Whether ``err`` is torch's error for a backward that cannot itself be differentiated:
    "the derivative for '<op>' is not implemented", or "...differentiate twice a function that
    was marked with @once_differentiable"."""
    text = str(err)
    return isinstance(err, (NotImplementedError, RuntimeError)) and (
        "differentiate twice" in text or ("derivative for" in text and "not implemented" in text)
    )


def power_steps(op: Operator, v: Tensor, *, iters: int, tol: float | None = None) -> tuple[Tensor, Tensor | None]:
    """``iters`` power steps ``v ← normalise(op(v))`` per sample from the unit directions ``v``, for
    an operator ``op`` that acts on each sample separately: the one power-iteration loop of the
    library (VAT's and TNAR's directions, :func:`robustreg.control.conv_operator_norm`).

    A sample whose ``op(v)`` is exactly zero keeps its direction (in VAT, the KL's change was
    below the floating-point resolution). With ``tol``, the loop stops early once every sample's
    estimate changed by at most ``tol`` (relative) from one step to the next.

    Returns the direction after the last step and the Rayleigh quotients ``⟨v_i, op(v)_i⟩`` of the
    last step's *input*, shape ``(B,)`` (``None`` when ``iters = 0``): an estimate of the top
    eigenvalue that costs no product beyond the steps'.
    """
    if iters < 0:
        raise ValueError(f"iters must be >= 0, got {iters}")
    rayleigh: Tensor | None = None
    for _ in range(iters):
        image = op(v)
        estimate = per_sample_dot(v, image)
        v = renormalize(image, v)
        settled = (
            tol is not None
            and rayleigh is not None
            and bool(((estimate - rayleigh).abs() <= tol * estimate.abs()).all())
        )
        rayleigh = estimate
        if settled:
            break
    return v, rayleigh


def renormalize(g: Tensor, previous: Tensor) -> Tensor:
    """``g`` normalised per sample; a sample whose ``g`` is exactly zero keeps ``previous``."""
    zero = g.flatten(1).abs().amax(1) == 0
    return torch.where(per_sample(zero, g), previous, per_sample_normalize(g))


def power_iteration(op: Operator, v0: Tensor, *, iters: int = 1) -> tuple[Tensor, Tensor]:
    """``iters`` steps ``v ← normalise(op(v))`` per sample from ``v0`` (:func:`power_steps`), for a
    symmetric positive semi-definite ``op`` that acts on each sample separately.

    Returns the unit direction ``v`` (shaped like ``v0``) and the Rayleigh quotients
    ``⟨v_i, op(v)_i⟩`` of the returned direction, shape ``(B,)`` (one more product).
    """
    v, _ = power_steps(op, per_sample_normalize(v0), iters=iters)
    return v, per_sample_dot(v, op(v))


def jvp_map(fn: Callable[[Tensor], Tensor], z: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """``(fn(z), J v)`` with ``J = ∂fn/∂z`` at ``z``, by forward mode."""
    return jvp(fn, (z,), (v,))


def vjp_map(fn: Callable[[Tensor], Tensor], z: Tensor, u: Tensor) -> Tensor:
    """``Jᵀ u`` with ``J = ∂fn/∂z`` at ``z``, by reverse mode."""
    _, pullback = vjp(fn, z)
    return pullback(u)[0]


def gram_map(fn: Callable[[Tensor], Tensor], z: Tensor) -> Operator:
    """The operator ``v ↦ JᵀJ v`` at ``z`` (one forward and one reverse product per call; the
    reverse pass's linearisation is computed once)."""
    _, pullback = vjp(fn, z)

    def apply(v: Tensor) -> Tensor:
        return pullback(jvp(fn, (z,), (v,))[1])[0]

    return apply


def conjugate_gradient(
    op: Operator, b: Tensor, *, iters: int = 4, x0: Tensor | None = None, tol: float = 0.0
) -> Tensor:
    """``iters`` conjugate-gradient iterations on ``op(x) = b`` per sample, for a symmetric
    positive definite ``op`` acting on each sample separately; exact after as many iterations
    as the dimension (in exact arithmetic). Samples whose residual norm falls to ``tol`` stop
    moving."""
    return _cg(lambda p: (op(p), None), b, iters=iters, x0=x0, tol=tol)[0]


def gram_solve(
    jvp_fn: Operator, vjp_fn: Operator, b: Tensor, *, iters: int = 4, tol: float = 0.0
) -> tuple[Tensor, Tensor]:
    """``(x, J x)`` for ``x ≈ (JᵀJ)⁻¹ b`` after ``iters`` CG iterations from 0 (``jvp_fn(v) = Jv``,
    ``vjp_fn(u) = Jᵀu``). CG's iterate is a combination of its search directions p_i and forms
    ``J p_i`` on the way to ``JᵀJ p_i``, so ``J x`` comes with the same combination for free."""

    def op(p: Tensor) -> tuple[Tensor, Tensor]:
        jp = jvp_fn(p)
        return vjp_fn(jp), jp

    x, jx = _cg(op, b, iters=iters, x0=None, tol=tol)
    return x, (jvp_fn(x) if jx is None else jx)  # jx is None only when CG took no step


def _cg(
    op: Callable[[Tensor], tuple[Tensor, Tensor | None]], b: Tensor, *, iters: int, x0: Tensor | None, tol: float
) -> tuple[Tensor, Tensor | None]:
    """The CG loop; ``op(p) = (A p, L p)`` for a linear ``L`` (or ``None``), returns ``(x, L x)``
    with ``L x`` accumulated from the ``L p`` (``None`` if no step was taken or from ``x0``)."""
    if iters < 0:
        raise ValueError(f"iters must be >= 0, got {iters}")
    tiny = torch.finfo(b.dtype).tiny
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - op(x)[0] if x0 is not None else b.clone()
    p = r.clone()
    rr = per_sample_dot(r, r)
    image: Tensor | None = None
    for _ in range(iters):
        active = rr > tol**2
        if not bool(active.any()):
            break
        ap, lp = op(p)
        pap = per_sample_dot(p, ap)
        step = torch.where(active & (pap > 0), rr / pap.clamp_min(tiny), torch.zeros_like(rr))
        x = x + per_sample(step, p) * p
        if lp is not None and x0 is None:
            term = per_sample(step, lp) * lp
            image = term if image is None else image + term
        r = r - per_sample(step, ap) * ap
        rr_new = per_sample_dot(r, r)
        ratio = torch.where(active, rr_new / rr.clamp_min(tiny), torch.zeros_like(rr))
        p = r + per_sample(ratio, p) * p
        rr = rr_new
    return x, image
