"""The data generator of Bayesian Adversarial Learning (Ye and Zhu, NeurIPS 2018, eq. (8)):
adversarial data drawn by stochastic-gradient Langevin dynamics from a density that trades the
learner's loss against the cost of moving the data.

For a sample ``(x, y)`` and posterior weight samples ``θ_1 … θ_S``, the adversarial data x̃ has
the density ``p(x̃ | x, y) ∝ exp(−U(x̃)/T)`` with the energy

    U(x̃) = (1/S)·Σ_s log p(y | x̃, θ_s) + α·c(x̃, x),

low where the learner's loss on the true label is high (its log-likelihood low) and the data has
not moved far (``c(x̃, x) = ‖x̃ − x‖²`` by default). **Sign convention.** The extracted text of
eq. (8) is ambiguous about signs; these follow from the paper's generative model, in which an
adversary favours data of high loss and low cost: the energy *adds* the mean log-likelihood (the
negative loss) and the cost, and Langevin descends it,

    x̃ ← x̃ − η·∇_x̃ U(x̃) + √(2ηT)·ξ,     ξ ~ N(0, I),

from ``x̃ = x``, for M steps: a step up the loss, pulled back toward x, with noise of temperature T
(the paper: 10⁻⁵ on MNIST, M = 15, one chain per sample). Departure from the text: with a box
(``bounds``, images in [0, 1]) every step ends with x̃ clamped into it (projected Langevin), so the
data stays valid; ``bounds=None`` for unbounded inputs samples the density exactly (up to the
discretisation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _checks
from ..modes import check_bn, inner_mode
from ..perturb import Bounds, check_bounds

LogLikelihood = Callable[[Tensor, Tensor], Tensor]  # (x̃ (B, ...), y (B,)) -> log p(y | x̃) (B,)
Cost = Callable[[Tensor, Tensor], Tensor]  # (x̃, x) -> (B,)


def squared_l2(x_adv: Tensor, x: Tensor) -> Tensor:
    """``c(x̃, x) = ‖x̃ − x‖²`` per sample: ``(B,)``."""
    return (x_adv - x).flatten(1).square().sum(1)


def mean_log_likelihood(models: Sequence[nn.Module]) -> LogLikelihood:
    """``(x̃, y) -> (1/S)·Σ_s log p(y | x̃, θ_s)`` over the models (the posterior samples), per sample."""

    def log_lik(x: Tensor, y: Tensor) -> Tensor:
        total = 0.0
        for model in models:
            total = total + F.log_softmax(model(x), 1).gather(1, y[:, None])[:, 0]
        return total / len(models)

    return log_lik


class SGLDAdversary:
    """Adversarial data by SGLD on the energy of the module docstring.

    Args:
        steps: M ≥ 0 Langevin steps (the paper: 15).
        step_size: η > 0. The defaults η = 0.5, α = 0.1 were chosen on held-out MNIST and
            FashionMNIST images (pixels in [0, 1]; docs/methods/bal.md): with η = 0.01, α = 1 the
            adversary moves an MNIST image by ‖x̃ − x‖₂ ≈ 0.05 and BAL trains as the BNN. Keep
            η·α < 1: the cost's pull alone multiplies x̃ − x by 1 − 2ηα per step, which diverges
            beyond it.
        alpha: the cost's weight α ≥ 0.
        temperature: T ≥ 0 (0: no noise, gradient descent on U).
        cost: ``c(x̃, x) -> (B,)``, :func:`squared_l2` by default; any differentiable cost.
        chains: S_x̃ ≥ 1 chains per sample in :meth:`sample` (the paper: 1).
        bounds: the input box every step is clamped into, or None.
        bn: the BatchNorm policy of the passes (``"eval"``: running statistics, untouched).
        generator: the noise's random generator, on the data's device (None: torch's global one).

    ``adv(model, x, y)`` is an attack like :class:`robustreg.PGD` (one chain, the model's own
    log-likelihood); :meth:`sample` takes the log-likelihood to use (a posterior average:
    :func:`mean_log_likelihood`) and draws ``chains`` chains per sample.
    """

    def __init__(
        self,
        *,
        steps: int = 15,
        step_size: float = 0.5,
        alpha: float = 0.1,
        temperature: float = 1e-5,
        cost: Cost = squared_l2,
        chains: int = 1,
        bounds: Bounds = (0.0, 1.0),
        bn: str = "eval",
        generator: torch.Generator | None = None,
    ) -> None:
        self.steps = _checks.count("steps", steps)
        self.step_size = _checks.positive_float("step_size", step_size)
        self.alpha = _checks.nonneg_float("alpha", alpha)
        self.temperature = _checks.nonneg_float("temperature", temperature)
        if not callable(cost):
            raise TypeError(f"cost must be a callable (x_adv, x) -> (B,), got {type(cost).__name__}")
        self.cost = cost
        self.chains = _checks.count("chains", chains, minimum=1)
        self.bounds = check_bounds(bounds)
        self.bn = check_bn(bn)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        self.generator = generator

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(steps={self.steps}, step_size={self.step_size:g}, alpha={self.alpha:g}, "
            f"temperature={self.temperature:g}, chains={self.chains}, bounds={self.bounds})"
        )

    def energy(self, log_likelihood: LogLikelihood, x_adv: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """``U(x̃) = log-likelihood(x̃, y) + α·c(x̃, x)`` per sample, ``(B,)``."""
        return log_likelihood(x_adv, y) + self.alpha * self.cost(x_adv, x)

    def sample(self, log_likelihood: LogLikelihood, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """``chains`` chains of M Langevin steps from x for every sample: ``(x̃, ỹ)`` of
        ``chains·B`` rows, chain-major (rows ``k·B … (k+1)·B − 1`` are chain k), detached."""
        return self._langevin(log_likelihood, x, y, self.chains)

    def _langevin(self, log_likelihood: LogLikelihood, x: Tensor, y: Tensor, chains: int) -> tuple[Tensor, Tensor]:
        x = _checks.check_x(x, self.bounds)
        y = _checks.check_y(y, x.shape[0])
        x_rep, y_rep = x.detach().repeat(chains, *[1] * (x.dim() - 1)), y.repeat(chains)
        x_adv = x_rep.clone()
        noise = (2 * self.step_size * self.temperature) ** 0.5
        with torch.enable_grad():
            for _ in range(self.steps):
                x_adv.requires_grad_(True)
                (grad,) = torch.autograd.grad(self.energy(log_likelihood, x_adv, x_rep, y_rep).sum(), x_adv)
                with torch.no_grad():
                    x_adv = x_adv - self.step_size * grad
                    if noise > 0:
                        xi = torch.randn(x_adv.shape, generator=self.generator, device=x.device, dtype=x.dtype)
                        x_adv = x_adv + noise * xi
                    if self.bounds is not None:
                        x_adv = x_adv.clamp(*self.bounds)
        return x_adv.detach(), y_rep

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """One chain against ``model``'s own log-likelihood (its passes under ``bn``, each module's
        mode restored): ``x̃`` of x's shape."""
        _checks.module("model", model)
        with inner_mode(model, self.bn):
            return self._langevin(mean_log_likelihood([model]), x, y, 1)[0]
