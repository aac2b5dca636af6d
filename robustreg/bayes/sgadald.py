"""SGAdaLD: stochastic-gradient Langevin dynamics with the scale adaptation of SGAdaHMC
(Springenberg et al., "Bayesian Optimization with Robust Bayesian Neural Networks", NeurIPS 2016),
without the momentum, as Bayesian Adversarial Learning samples its weight posterior (Ye and Zhu,
NeurIPS 2018, eqs. (9)-(10)).

With ``g`` the stochastic gradient of the energy ``U(θ) = −log p(D | θ) − log p(θ)`` (what the
caller back-propagates: the data term of a batch of B out of N samples scaled by N/B), per
parameter and element-wise:

    V̂ ← (1 − 1/τ)·V̂ + (1/τ)·g²,
    θ ← θ − η²·(V̂ + δ)^(−1/2)·g + ξ,     ξ ~ N(0, σ²),
    σ² = T·2Cη³·(V̂ + δ)^(−1) − η⁴.

η is the step size (``lr``), τ the averaging window of V̂ (``tau``; ∞ freezes V̂ at its first
value), C the friction (``friction``), T the temperature (``temperature``: 1 samples the
posterior itself, the paper uses 10⁻⁵ on MNIST; it scales the injected noise, i.e. the chain
samples ``p(θ | D)^(1/T)``), δ a floor that keeps the preconditioner finite (``eps``).

The ``−η⁴`` term is SGAdaHMC's estimate of the noise the stochastic gradient itself already
brings; at a low temperature it is larger than the tempered Langevin noise and ``σ²`` would be
negative. That is not an error: no noise is injected there (``σ² = max(·, 0)``, a documented
clamp), and ``state["clamped"]`` counts the elements of the last step where it happened, so a run
can report how much of the chain moved by its gradient noise alone.

**What the update samples.** With V̂ held at v, a step is a preconditioned Langevin step of size
``η²·v^(−1/2)``, which samples ``exp(−U/T')`` when its noise variance is ``2·η²·v^(−1/2)·T'``; the
noise above is ``2TCη³/v`` (ignoring −η⁴), so the chain's effective temperature is
``T' = T·C·η/√v``: the tempered posterior ``p(θ | D)^(1/T)`` itself only where ``C·η = √v``.
SGAdaHMC's momentum is what makes its friction and noise balance for any V̂; the paper's
momentum-free variant (eq. (10)) keeps that noise, so its samples are those of a V̂-dependent
temperature. This class implements eq. (10) as written; choose C (``friction``) with that in
mind, or read T' off ``state["v"]``.

V̂ starts at the first gradient's square (``v0=None``) or at ``v0``. The noise is drawn from
``generator`` (on the parameters' device) or from torch's global generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from .. import _checks


class SGAdaLD(torch.optim.Optimizer):
    """SGAdaLD as a ``torch.optim.Optimizer`` (see the module docstring for the update).

    Args:
        params: parameters or parameter groups.
        lr: the step size η > 0 (the gradient step is η², the noise variance scale η³).
        tau: the window τ ≥ 1 of V̂'s running average; ``math.inf`` keeps V̂ at its start.
        friction: C ≥ 0.
        temperature: T ≥ 0 (0: no injected noise, a preconditioned gradient step).
        eps: δ > 0 added to V̂ before its root and inverse.
        v0: V̂'s start: None for the first gradient's square, else a number ≥ 0.
        generator: the noise's random generator (None: torch's global one).

    Example:
        >>> opt = SGAdaLD(model.parameters(), lr=0.01, temperature=1e-5)
        >>> loss = torch.nn.functional.cross_entropy(model(x), y) * 60000  # N × batch mean: −log p(D|θ)
        >>> opt.zero_grad(); loss.backward(); opt.step()
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float,
        *,
        tau: float = 100.0,
        friction: float = 0.05,
        temperature: float = 1.0,
        eps: float = 1e-8,
        v0: float | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        lr = _checks.positive_float("lr", lr)
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or math.isnan(tau) or tau < 1:
            raise ValueError(f"tau must be a number >= 1 (math.inf: V̂ never moves), got {tau!r}")
        friction = _checks.nonneg_float("friction", friction)
        temperature = _checks.nonneg_float("temperature", temperature)
        eps = _checks.positive_float("eps", eps)
        if v0 is not None:
            v0 = _checks.nonneg_float("v0", v0)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        self.generator = generator
        defaults = {"lr": lr, "tau": float(tau), "friction": friction, "temperature": temperature, "eps": eps, "v0": v0}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        """One SGAdaLD update of every parameter with a gradient; ``closure`` (optional) re-evaluates
        the loss with gradients enabled and returns it."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, tau, c, temp, eps = (group[k] for k in ("lr", "tau", "friction", "temperature", "eps"))
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if g.is_sparse:
                    raise RuntimeError("SGAdaLD does not support sparse gradients")
                state = self.state[p]
                if "v" not in state:
                    state["v"] = g.square() if group["v0"] is None else torch.full_like(p, group["v0"])
                v = state["v"]
                if math.isfinite(tau):
                    v.mul_(1 - 1 / tau).addcmul_(g, g, value=1 / tau)
                inv = (v + eps).reciprocal()  # (V̂ + δ)^-1
                p.addcmul_(inv.sqrt(), g, value=-(lr**2))
                var = (temp * 2 * c * lr**3) * inv - lr**4
                state["clamped"] = int((var <= 0).sum())
                if temp > 0:
                    noise = torch.randn(p.shape, generator=self.generator, device=p.device, dtype=p.dtype)
                    p.add_(noise * var.clamp_min(0).sqrt())
        return loss
