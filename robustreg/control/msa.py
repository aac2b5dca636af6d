"""Lyapunov-stable training by the method of successive approximations (MSA): Chen and Su,
"Adversarially Robust Neural Networks via Optimal Control: Bridging Robustness with Lyapunov
Stability", ICLR 2020.

Training as optimal control of the layer dynamics ``x_{t+1} = f_t(x_t, θ_t)`` with terminal
loss ``J = Φ(x_T)``. With the Hamiltonian ``H_t(x, p, θ) = p · f_t(x, θ)``, one MSA iteration is

1. forward: the states ``x_t`` under the current ``θ^k``;
2. backward: the co-states ``p_t = −∂J/∂x_t`` (so ``p_t = ∂H_t/∂x`` evaluated along the states);
3. every layer, on its own, maximises its Hamiltonian summed over the batch, with a weight
   penalty α and a proximal term β that keeps the step small (the "extended" MSA):

       θ_t^{k+1} = argmax_θ  Σ_i p_{t+1,i} · f_t(x_{t,i}, θ) − α‖θ‖² − β‖θ − θ_t^k‖²
                   subject to ‖θ‖₂ ≤ r   (for a constrained layer; r = 1 in the paper).

For a layer that is linear in θ (Linear and convolution weights: ``f_t = θ x``), the first term
is ``⟨θ, G⟩`` with ``G = Σ_i p_{t+1,i} x_{t,i}ᵀ = −∂J/∂θ_t``, so the objective is
``−(α + β)‖θ − θ*‖² + const`` with

       θ* = (G + 2β θ^k) / (2(α + β)),

and the constrained maximiser is the Frobenius-nearest point of the ball to θ*: its singular
values clipped at r (:func:`~robustreg.control.spectral.project_spectral`). Exact, where the
paper fell back to an interior-point solver.

Parameters without a constraint (biases, BatchNorm, unconstrained layers) take the same θ*,
which for a parameter the layer is linear (or affine) in is again the exact maximiser, and in
general is one gradient-ascent step on ``H_t − α‖θ‖²`` of size ``1/(2(α+β))`` from θ^k; since
``∇_θ H_t = −∂J/∂θ_t``, that is ``θ^k − (∂J/∂θ + 2αθ^k)/(2(α+β))``: an SGD step with learning
rate ``1/(2(α+β))`` and weight decay ``2α``. With α = 0 and no constraint one MSA step is
exactly SGD with learning rate ``1/(2β)``.

The co-states never need to be materialised per layer: ``Σ_i p_{t+1,i} ∂f_t/∂θ = −∂J/∂θ_t`` is
what one reverse pass (``torch.autograd.grad``) gives for every layer at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _checks
from .._distributed import all_reduce_mean
from ..record import Record
from .spectral import (
    as_matrix,
    conv_circular_norm,
    conv_operator_norm,
    project_spectral,
    spectral_norm,
    spectral_radius,
)

CONSTRAINABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONV_NORMS = ("matrix", "operator")


def hamiltonian_step(
    theta: Tensor, grad_h: Tensor, *, alpha: float, beta: float, radius: float | None = None
) -> Tensor:
    """``argmax_θ ⟨θ, G⟩ − α‖θ‖² − β‖θ − θ^k‖²`` subject to ``‖θ‖₂ ≤ radius`` (none if ``None``).

    Args:
        theta: θ^k, the current weight (a matrix, or a convolution kernel read as
            ``(Cout, Cin·k…)``).
        grad_h: ``G = ∇_θ Σ_i p_{t+1,i}·f_t(x_{t,i}, θ) = −∂J/∂θ``.
        alpha, beta: the weight penalty (≥ 0) and the proximal weight (> 0).
        radius: the spectral-norm bound, or ``None`` for no constraint.
    """
    _checks.positive_float("beta", beta)
    _checks.nonneg_float("alpha", alpha)
    theta_star = (grad_h + 2 * beta * theta) / (2 * (alpha + beta))
    return theta_star if radius is None else project_spectral(theta_star, radius)


@dataclass(frozen=True)
class LayerRule:
    """How MSA updates one module's parameters."""

    alpha: float
    beta: float
    constrain: bool


@dataclass(frozen=True)
class LayerReport:
    """One layer's norms: ``norm`` = ‖θ‖₂ of the weight matrix; ``radius`` = ρ(θ) when it is
    square; ``operator_norm`` of a convolution on the input size it last saw in a step
    (``conv_norm="operator"``), by power iteration."""

    name: str
    kind: str
    shape: tuple[int, ...]
    constrained: bool
    norm: float
    radius: float | None
    operator_norm: float | None


class MSA:
    """Training steps by the method of successive approximations with a spectral constraint.

    ``msa.step(x, y)`` runs one forward pass (states), one reverse pass (co-states, through
    ``torch.autograd.grad``: ``.grad`` is never touched) and the layer-wise Hamiltonian
    maximisation, and writes the new parameters in place: MSA *is* the optimiser, so no
    ``torch.optim`` optimizer is used with it. The forward runs in the model's current mode
    (a training step: BatchNorm updates its running statistics as in any training forward);
    the mode is not changed.

    Args:
        model: the network (a DistributedDataParallel wrapper is unwrapped; the gradients are
            then averaged over processes with ``torch.distributed``).
        beta: proximal weight β > 0 (the step is an SGD step of learning rate 1/(2(α+β))
            before projection).
        alpha: weight penalty α ≥ 0.
        constrain: which layers carry ``‖θ‖₂ ≤ radius``: ``"all"`` (every Linear and
            convolution), ``None``, or an iterable of modules or their names (each must be a
            Linear or convolution).
        radius: the spectral-norm bound r (1 in the paper).
        conv_norm: ``"matrix"`` bounds a convolution's kernel read as the matrix
            ``(Cout, Cin·k…)`` (the exact Frobenius projection); ``"operator"`` bounds the
            convolution's operator norm on the input size it sees (the last one, if several): it
            bounds it from above by the exact norm of the circular convolution on the padded
            grid (:func:`~robustreg.control.spectral.conv_circular_norm`, by FFT) and scales the
            kernel by ``r/bound`` when ``bound > r``: a feasible point for certain, though not
            the Frobenius-nearest one (which has no closed form for a kernel of fixed support).
            Every step records the convolutions' input sizes; ``report()`` adds each one's
            operator norm by power iteration.
        layers: per-layer overrides, ``{module or name: {"alpha": …, "beta": …, "constrain": …}}``.
        loss_fn: ``loss_fn(logits, y)``, the terminal loss Φ (batch mean); cross-entropy by default.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        beta: float,
        alpha: float = 0.0,
        constrain: str | Iterable[nn.Module | str] | None = "all",
        radius: float = 1.0,
        conv_norm: str = "matrix",
        layers: Mapping[nn.Module | str, Mapping[str, object]] | None = None,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    ) -> None:
        _checks.module("model", model)
        net = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        self.model, self.net = model, net
        self.beta, self.alpha = _checks.positive_float("beta", beta), _checks.nonneg_float("alpha", alpha)
        self.radius = _checks.positive_float("radius", radius)
        if conv_norm not in CONV_NORMS:
            raise ValueError(f"conv_norm must be one of {CONV_NORMS}, got {conv_norm!r}")
        self.conv_norm = conv_norm
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable as loss_fn(logits, y), got {type(loss_fn).__name__}")
        self.loss_fn = F.cross_entropy if loss_fn is None else loss_fn
        names = {m: n for n, m in net.named_modules()}
        by_name = {n: m for m, n in names.items()}

        def resolve(key: nn.Module | str, what: str) -> nn.Module:
            if isinstance(key, str):
                if key not in by_name:
                    raise ValueError(f"{what}: the model has no module named {key!r}")
                return by_name[key]
            if key not in names:
                raise ValueError(f"{what}: {type(key).__name__} is not a module of the model")
            return key

        if constrain == "all":
            constrained = [m for m in net.modules() if isinstance(m, CONSTRAINABLE)]
        elif constrain is None:
            constrained = []
        elif isinstance(constrain, (str, nn.Module)):
            raise TypeError('constrain must be "all", None, or an iterable of modules or module names')
        else:
            constrained = [resolve(k, "constrain") for k in constrain]
        rules = {m: LayerRule(self.alpha, self.beta, m in constrained) for m in net.modules()}
        for key, override in (layers or {}).items():
            m = resolve(key, "layers")
            unknown = set(override) - {"alpha", "beta", "constrain"}
            if unknown:
                raise ValueError(
                    f"layers[{names[m]!r}]: unknown keys {sorted(unknown)}; allowed alpha, beta, constrain"
                )
            rules[m] = LayerRule(
                _checks.nonneg_float(f"layers[{names[m]!r}]['alpha']", override.get("alpha", rules[m].alpha)),
                _checks.positive_float(f"layers[{names[m]!r}]['beta']", override.get("beta", rules[m].beta)),
                bool(override.get("constrain", rules[m].constrain)),
            )
        for m, rule in rules.items():
            if rule.constrain and not isinstance(m, CONSTRAINABLE):
                raise TypeError(
                    f"layer {names[m]!r} ({type(m).__name__}) cannot be constrained: the spectral "
                    "constraint applies to nn.Linear and nn.Conv1d/2d/3d weights"
                )
            if rule.constrain and conv_norm == "operator" and getattr(m, "padding_mode", "zeros") != "zeros":
                raise ValueError(
                    f'conv_norm="operator" bounds zero-padded convolutions; layer {names[m]!r} has '
                    f"padding_mode={m.padding_mode!r} (use conv_norm='matrix')"
                )
        self.rules, self.names = rules, names
        self._inputs: dict[nn.Module, tuple[int, ...]] = {}  # convolutions' input sizes, for "operator"
        self._vectors: dict[nn.Module, Tensor] = {}  # warm starts of the power iteration
        self._num_classes: int | None = None
        self.last: Record | None = None

    def step(self, x: Tensor, y: Tensor) -> Tensor:
        """One MSA iteration on the batch ``(x, y)``; returns the loss before the update (detached).

        Checked first, changing nothing (parameters, running statistics, modes) on failure: x a
        non-empty finite floating batch of the model's dtype, y integer labels ``(B,)`` in the model's classes, the
        model's output ``(B, C)`` logits (probed once on one sample in eval mode without
        gradients, then cached)."""
        x = _checks.check_x(x, None)
        y = _checks.check_y(y, x.shape[0])
        classes = _checks.classes_of(self.net, x, self._num_classes)
        _checks.check_classes(y, classes)
        self._num_classes = classes
        params = [(m, n, p) for m in self.net.modules() for n, p in m.named_parameters(recurse=False)]
        params = [(m, n, p) for m, n, p in params if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        hooks = []
        if self.conv_norm == "operator":
            convs = [m for m, r in self.rules.items() if r.constrain and not isinstance(m, nn.Linear)]
            hooks = [c.register_forward_hook(self._record_input) for c in convs]
        try:
            with torch.enable_grad():
                loss = self.loss_fn(self.net(x), y)  # states x_t (kept by autograd)
                grads = torch.autograd.grad(loss, [p for _, _, p in params], allow_unused=True)  # ∂J/∂θ_t = −G_t
        finally:
            for h in hooks:
                h.remove()
        # A parameter the forward did not use has no Hamiltonian term: left as it is (as SGD does).
        used = [(t, g) for t, g in zip(params, grads, strict=True) if g is not None]
        params, grads = [t for t, _ in used], all_reduce_mean([g for _, g in used])
        projected, updates = 0, []
        default = LayerRule(self.alpha, self.beta, False)  # a module added after construction
        with torch.no_grad():
            for (m, name, p), g in zip(params, grads, strict=True):
                rule = self.rules.get(m, default)
                new = hamiltonian_step(p, -g.to(p.dtype), alpha=rule.alpha, beta=rule.beta)
                if rule.constrain and name == "weight":
                    bounded = self._constrain(m, new)
                    projected += bounded is not new
                    new = bounded
                updates.append((p, new))
            for p, new in updates:  # written only once every update is computed
                p.copy_(new)
        self.last = Record(metrics={"loss": loss.detach(), "projected": torch.tensor(float(projected))})
        return loss.detach()

    def _record_input(self, module: nn.Module, args: tuple, out: Tensor) -> None:
        self._inputs[module] = tuple(args[0].shape[1:])

    def _constrain(self, m: nn.Module, w: Tensor) -> Tensor:
        if isinstance(m, nn.Linear) or self.conv_norm == "matrix":
            return project_spectral(w, self.radius)
        # The circular bound is ≥ the operator norm, so the scaled kernel is feasible for certain
        # (power iteration converges from below, and slowly when the top singular values are close).
        bound = conv_circular_norm(m, self._inputs[m], weight=w)
        return w if bound <= self.radius else w * (self.radius / bound)

    def report(self) -> list[LayerReport]:
        """Every Linear/convolution layer's norms, constrained or not."""
        out = []
        for m, rule in self.rules.items():
            if not isinstance(m, CONSTRAINABLE):
                continue
            w = m.weight.detach()
            square = as_matrix(w).shape[0] == as_matrix(w).shape[1]
            op = None
            if not isinstance(m, nn.Linear) and m in self._inputs:
                op, self._vectors[m] = conv_operator_norm(m, self._inputs[m], start=self._vectors.get(m))
            out.append(
                LayerReport(
                    self.names[m], type(m).__name__, tuple(w.shape), rule.constrain,
                    spectral_norm(w), spectral_radius(w) if square else None, op,
                )
            )  # fmt: skip
        return out
