"""YOPO (Zhang, Zhang, Lu, Zhu, Dong, "You Only Propagate Once: Accelerating Adversarial
Training via Maximal Principle", NeurIPS 2019)."""

from __future__ import annotations

import contextlib
import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _checks
from ..devices import uses_kernels
from ..modes import inner_mode
from ..perturb import Bounds, clamp_to_box
from ..record import Record
from .base import AdversarialLoss, accuracy
from .first_layer import FirstLayer, find_first_layer, inspect_first_layer
from .trades import kl_start, kl_sum, trades_loss

log = logging.getLogger(__name__)

OBJECTIVES = ("ce", "trades")
CHUNK_BYTES = 1 << 22  # co-state bytes per chunk of the inner steps (4 MiB: fits in L2/L3)
FIRST_LAYER_GRADS = ("hamiltonian", "backprop")


def _eager() -> contextlib.AbstractContextManager[None]:
    """Run ``torch.compile``'d modules eagerly inside the block (``torch.compiler.set_stance``; the
    previous stance comes back on exit). YOPO reads f0's output through a forward hook, which a
    compiled graph never calls; inside a region torch.compile is itself tracing, nothing is changed."""
    if torch.compiler.is_compiling():
        return contextlib.nullcontext()
    return torch.compiler.set_stance("force_eager")


def _capture(store: list[Tensor], clone: bool):
    """A forward hook keeping f0's output x1 (for ``∂L/∂x1``). With ``clone`` it passes on a
    copy, so that an in-place op after f0 (``ReLU(inplace=True)``) cannot overwrite x1 or change
    its grad_fn; the copy costs one more x1-sized buffer, so it is made only for models that need
    it (:func:`robustreg.adversarial.first_layer.inspect_first_layer`)."""

    def hook(module: nn.Module, args: tuple, out: Tensor) -> Tensor | None:
        store.append(out)
        return out.clone() if clone else None

    return hook


class YOPO(AdversarialLoss):
    """YOPO-m-n: the adversary is updated n times per full forward/backward, through the first
    layer only, with the rest of the network's co-state frozen.

    Split f = g ∘ f0 with f0 the first layer. Per batch, from η = 0 or a uniform start in the
    ball (clamped into ``bounds``), for j = 1..m:

    1. one full forward/backward at x + η: ``L_j = CE(f(x + η), y)`` (batch mean), the weight
       gradients ``∇_θ L_j`` and the co-state ``p_j = ∂L_j/∂x1`` at ``x1 = f0(x + η)``;
    2. n inner steps with ``p_j`` frozen:
       ``η ← Π_ε(η + α·sign(∇_η ⟨p_j, f0(x + η)⟩))``, then η clamped so that x + η ∈ bounds;
    3. the first layer's Hamiltonian gradient ``∇_θ0 ⟨p_j, f0(x + η)⟩`` at the new η.

    The returned loss's value is ``mean_j L_j``; its one backward leaves in ``.grad`` the mean
    over j of ``∇_θ L_j`` for every parameter outside f0 and, for f0's parameters, the mean of
    step 3's gradients (``first_layer_grad="hamiltonian"``, the paper's Algorithm 1 and the
    official MNIST code) or of ``∇_θ0 L_j`` (``"backprop"``). η persists across the m passes.
    Step 2 costs a forward and a transposed product of f0 alone
    (:class:`robustreg.adversarial.first_layer.FirstLayer`); for an affine f0 the direction does not depend
    on η and is computed once per pass.

    Note on learning rates: this loss averages the m gradients; the official code sums them and
    divides the learning rate by m (e.g. 0.1/5 on MNIST), so the paper's learning rate applies
    here unchanged.

    ``objective="trades"`` is YOPO-TRADES: the passes craft η against the TRADES attack
    objective ``Σ_i KL(f(x_i) ‖ f(x_i + η_i))`` (the target ``f(x)`` held fixed), and the loss is
    ``CE(f(x), y) + β·Σ_i KL(f(x_i) ‖ f(x_i + η_i))/B`` back-propagated into every layer, as in
    :class:`robustreg.TRADES`. (The official YOPO-TRADES code also adds the attack passes'
    layer-one Hamiltonian gradients to layer one's; that is not reproduced, so
    ``first_layer_grad`` must be ``"backprop"`` there.)

    Args:
        model: a classifier returning logits ``(B, C)``.
        m: full forward/backward passes per batch (5).
        n: inner first-layer steps per pass (3). ``n=0`` is allowed: η never moves from its
            start (uniform in the ball, or 0 with ``random_start=False``), so the m passes are
            training passes at that start; ``reg.last.steps`` shows 0.
        eps: threat-model radius (8/255).
        alpha: inner step size (2/255).
        norm: ``"linf"`` or ``"l2"``.
        random_start: start η uniformly in the ball (else 0).
        first_layer: the module f0, which must receive the model's input itself (e.g.
            ``model.layer_one`` of :class:`robustreg.models.SmallCNN`, conv + ReLU).
            ``None``: the first module with parameters applied to the input, found by tracing
            one forward; it is logged and kept in ``reg.first_layer``.
        first_layer_grad: ``"hamiltonian"`` or ``"backprop"`` (``None``: ``"hamiltonian"``
            for ``"ce"``, ``"backprop"`` for ``"trades"``).
        objective: ``"ce"`` or ``"trades"``.
        beta: TRADES weight β (6.0), used with ``objective="trades"``.
        bounds: valid input box, ``None`` for unbounded inputs.
        bn: BatchNorm policy of the m passes (``None``: ``"train"`` for ``"ce"``, as the
            official code, whose passes are training passes; ``"eval"`` for the TRADES attack
            passes, as the official YOPO-TRADES code).

    Under ``torch.compile`` (``torch.compile(model)``, ``model.compile()``, DDP either side) the
    passes that read f0's output (all m passes of ``"ce"``, the attack passes of ``"trades"``) and
    the search for f0 run the model eagerly: that output comes from a forward hook, which a
    compiled graph does not call. The results are those of the uncompiled model; YOPO gains no
    speed from compiling (TRADES' final loss pass still runs compiled).

    ``reg.last.x_adv`` is x + η after the last inner step; ``reg.last.metrics``: ``loss``,
    ``adv_acc`` (of the last pass) and, for TRADES, ``natural_loss``, ``robust_loss``,
    ``clean_acc``.

    Example:
        >>> reg = YOPO(model, m=5, n=3, first_layer=model.layer_one)
        >>> loss = reg(x, y); loss.backward(); optimizer.step()
    """

    annealed_k = "m"

    def __init__(
        self,
        model: nn.Module,
        m: int = 5,
        n: int = 3,
        *,
        eps: float = 8 / 255,
        alpha: float = 2 / 255,
        norm: str = "linf",
        random_start: bool = True,
        first_layer: nn.Module | None = None,
        first_layer_grad: str | None = None,
        objective: str = "ce",
        beta: float = 6.0,
        bounds: Bounds = (0.0, 1.0),
        bn: str | None = None,
    ) -> None:
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        self.m = m
        self.objective = objective
        self.beta = beta
        self.first_layer_grad = first_layer_grad or ("hamiltonian" if objective == "ce" else "backprop")
        self.first_layer = first_layer
        self._f0: FirstLayer | None = None if first_layer is None else FirstLayer(first_layer)
        self._f0_checked = False  # set once f0 is known to receive the model's input
        self._clone_x1 = False  # whether an in-place op after f0 overwrites its output
        bn = bn or ("train" if objective == "ce" else "eval")
        super().__init__(
            model, eps=eps, alpha=alpha, steps=n, norm=norm, random_start=random_start, bounds=bounds, bn=bn
        )

    @property
    def n(self) -> int:
        """Inner steps per pass (the base class's ``steps``)."""
        return self.steps

    @n.setter
    def n(self, value: int) -> None:
        self.steps = value

    def _check_config(self) -> None:
        _checks.count("n", self.steps)  # the base class's steps, under YOPO's name
        super()._check_config()
        _checks.count("m", self.m, minimum=1)
        _checks.nonneg_float("beta", self.beta)
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.first_layer_grad not in FIRST_LAYER_GRADS:
            raise ValueError(f"first_layer_grad must be one of {FIRST_LAYER_GRADS}, got {self.first_layer_grad!r}")
        if self.objective == "trades" and self.first_layer_grad != "backprop":
            raise ValueError('objective="trades" trains every layer on CE + β·KL: first_layer_grad must be "backprop"')

    def _first_layer(self, x: Tensor) -> FirstLayer:
        """f0, found (or checked) on the first call by tracing one eval-mode forward."""
        if not self._f0_checked:
            probe = x[:1].detach()
            if self._f0 is None:
                self.first_layer = find_first_layer(self.net, probe)
                self._f0 = FirstLayer(self.first_layer)
                log.info("YOPO: first layer f0 = %s", self.first_layer)
            why, self._clone_x1 = inspect_first_layer(self.net, self._f0.module, probe)
            if why is not None:
                raise ValueError(
                    "first_layer must receive the model's input itself (YOPO perturbs x through f0 alone); "
                    f"the {type(self._f0.module).__name__} given {why}"
                )
            self._f0_checked = True
        return self._f0

    def _start(self, x: Tensor) -> Tensor:
        """Uniform in the ball, or for TRADES ``0.001·N(0, I)`` (its KL has no gradient at η = 0)."""
        if self.random_start and self.objective == "trades":
            return kl_start(x, self.ball, self.eps, self.bounds)
        return super()._start(x)

    def _loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, Record]:
        with _eager():
            f0 = self._first_layer(x)
        if self.objective == "trades":
            return self._trades(x, y, f0)
        with _eager():
            return self._ce(x, y, f0)

    def _inner_steps(self, f0: FirstLayer, x0: Tensor, eta: Tensor, p: Tensor) -> Tensor:
        """Step 2: n projected ascent steps on ``⟨p, f0(x + η)⟩`` with p frozen.

        The steps are independent per sample, so they run on chunks of the batch small enough
        (:data:`CHUNK_BYTES` of co-state) for a chunk's intermediates to stay in cache through
        all n steps: about 2× faster on CPU than whole-batch steps, and the same numbers."""
        if self.steps == 0:
            return eta
        parts = [self._steps_on(f0, xc, ec, pc) for xc, ec, pc in zip(*self._chunks(x0, eta, p), strict=True)]
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    @staticmethod
    def _chunks(*tensors: Tensor) -> list[tuple[Tensor, ...]]:
        """Per tensor, its chunks along the batch, of :data:`CHUNK_BYTES` of the last one (the
        co-state): a cache optimisation of the CPU path, so one chunk (the whole batch) off the
        devices of :data:`robustreg.devices.KERNEL_DEVICES`, where each chunk's small operations
        would be as many kernel launches."""
        p = tensors[-1]
        if not uses_kernels(p):
            return [(t,) for t in tensors]
        rows = max(1, CHUNK_BYTES // max(1, p[0].numel() * p.element_size()))
        count = -(-len(p) // rows)  # ⌈B / rows⌉ chunks, of equal size: 4 × 32 rows, not 3 × 41 + 5
        rows = -(-len(p) // count)
        return [t.split(rows) for t in tensors]

    def _steps_on(self, f0: FirstLayer, x0: Tensor, eta: Tensor, p: Tensor) -> Tensor:
        ball, direction = self.ball, None
        pullback = f0.pullback(p)
        for _ in range(self.steps):
            if direction is None or not f0.affine:  # affine f0: Jᵀp is the same at every η
                direction = pullback(x0 + eta)
            eta = clamp_to_box(x0, ball.project(ball.step(eta, direction, self.step_size), self.eps), self.bounds)
        return eta

    def _hamiltonian_grads(self, f0: FirstLayer, x: Tensor, p: Tensor, total: dict[int, Tensor]) -> None:
        """Step 3: add ``∇_θ0 ⟨p, f0(x)⟩`` to f0's entries of ``total`` (by chunks, like step 2)."""
        for xc, pc in zip(*self._chunks(x, p), strict=True):
            for name, g in f0.param_grad(xc, pc).items():
                total[id(f0.params[name])] += g

    def _ce(self, x: Tensor, y: Tensor, f0: FirstLayer) -> tuple[Tensor, Record]:
        net, x0 = self.net, x.detach()
        theta = [p for p in net.parameters() if p.requires_grad]
        in_f0 = {id(p) for p in f0.params.values()}
        hamiltonian = self.first_layer_grad == "hamiltonian"
        # Step 1 asks autograd for these; f0's weights come from step 3 in "hamiltonian" mode.
        wanted = [p for p in theta if not (hamiltonian and id(p) in in_f0)]
        total = {id(p): torch.zeros_like(p) for p in theta}
        extra = [x] if x.requires_grad else []  # embeddings: the loss's gradient reaches x too
        x_total = torch.zeros_like(x) if extra else None
        captured: list[Tensor] = []
        handle = f0.module.register_forward_hook(_capture(captured, self._clone_x1))
        eta = self._start(x0)
        losses = []
        try:
            with torch.enable_grad(), inner_mode(net, self.bn):
                for j in range(self.m):
                    captured.clear()
                    # The last pass runs through the model as given: under DDP its forward arms
                    # the gradient reducer, which then all-reduces the gradients of the loss
                    # returned below during the user's backward.
                    runner = self.model if j == self.m - 1 else net
                    xin = (x if extra else x0) + eta
                    logits = runner(xin)
                    loss_j = F.cross_entropy(logits, y)
                    last_logits = logits.detach()  # the graph itself must not outlive the pass
                    del logits
                    grads = torch.autograd.grad(loss_j, [*wanted, captured[0], *extra], allow_unused=True)
                    for p, g in zip(wanted, grads, strict=False):
                        if g is not None:
                            total[id(p)] += g
                    p_j = grads[len(wanted)].detach()
                    if extra:
                        x_total += grads[-1]
                    losses.append(loss_j.detach())
                    del grads, loss_j
                    captured.clear()  # x1 is not needed past its co-state
                    eta = self._inner_steps(f0, x0, eta, p_j)
                    if hamiltonian:
                        self._hamiltonian_grads(f0, x0 + eta, p_j, total)
                    del p_j  # the next pass's graph must not share the peak with this co-state
        finally:
            handle.remove()
        value = torch.stack(losses).mean()
        # A loss whose value is mean_j L_j and whose gradient is the accumulated one.
        surrogate = sum((p * (total[id(p)] / self.m)).sum() for p in theta)
        if extra:
            surrogate = surrogate + (x * (x_total / self.m)).sum()
        loss = value + (surrogate - surrogate.detach()) if torch.is_tensor(surrogate) else value
        record = Record((x0 + eta).detach(), {"loss": value, "adv_acc": accuracy(last_logits, y)})
        return loss, record

    def _trades(self, x: Tensor, y: Tensor, f0: FirstLayer) -> tuple[Tensor, Record]:
        net, x0 = self.net, x.detach()
        captured: list[Tensor] = []
        handle = f0.module.register_forward_hook(_capture(captured, self._clone_x1))
        eta = self._start(x0)
        try:
            with torch.enable_grad(), inner_mode(net, self.bn), _eager():
                with torch.no_grad():
                    target = F.softmax(net(x0), dim=1)  # (B, C), fixed during the attack
                for _ in range(self.m):
                    captured.clear()
                    attack = kl_sum(net(x0 + eta), target)
                    (p_j,) = torch.autograd.grad(attack, captured[0])
                    eta = self._inner_steps(f0, x0, eta, p_j.detach())
                    del p_j  # the next pass's graph must not share the peak with this co-state
        finally:
            handle.remove()
        return trades_loss(self.model, x, x + eta, y, self.beta)
