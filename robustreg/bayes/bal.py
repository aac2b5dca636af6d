"""Bayesian Adversarial Learning (Ye and Zhu, NeurIPS 2018, Algorithm 1): a game between a data
generator that draws adversarial data from a distribution (:class:`~robustreg.bayes.SGLDAdversary`)
and a Bayesian learner that keeps S_θ samples of its weight posterior
(:class:`~robustreg.bayes.SGAdaLD` chains), advanced by Gibbs iterations.

One iteration (:meth:`BAL.step`) on a mini-batch ``(x, y)``:

1. adversarial data: S_x̃ chains per sample of M Langevin steps from x on
   ``U(x̃) = (1/S_θ)·Σ_s log p(y | x̃, θ_s) + α·c(x̃, x)`` (the posterior samples held fixed);
2. for each of the S_θ weight chains, ``theta_steps`` SGAdaLD steps on the energy
   ``U(θ) = N·CE(f_θ(x̃), ỹ) + (λ/2)·‖θ‖²`` of that adversarial batch (N = ``data_size``: the
   batch mean scaled to the whole data set, λ = ``prior_precision``: a Gaussian prior);
3. prediction averages the chains' class probabilities: ``p(y | x) = (1/S_θ)·Σ_s p(y | x, θ_s)``
   (:meth:`BAL.predict`, and :attr:`BAL.ensemble`, a module whose output is ``log p(y | x)``, so
   that :func:`robustreg.robust_accuracy` and AutoAttack attack the ensemble end to end, their
   gradients through the average).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _checks
from .._distributed import all_reduce_mean, several_processes
from ..adversarial.base import accuracy
from ..modes import inner_mode, unwrap
from ..record import Record
from .sgadald import SGAdaLD
from .sgld import SGLDAdversary, mean_log_likelihood


class PosteriorEnsemble(nn.Module):
    """The posterior predictive of weight samples: ``forward(x) = log((1/S)·Σ_s softmax(f_s(x)))``,
    ``(B, C)``, a log-probability that serves as logits (its softmax is the average of the members'
    probabilities; its argmax their averaged prediction). Computed with ``logsumexp`` of the
    members' log-softmax, so it stays finite where a member is certain."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("members must hold at least one model")
        self.members = nn.ModuleList(members)

    def forward(self, x: Tensor) -> Tensor:
        logp = torch.stack([F.log_softmax(m(x), 1) for m in self.members])  # (S, B, C)
        return torch.logsumexp(logp, 0) - torch.log(torch.tensor(float(len(self.members)), dtype=logp.dtype))


class BAL:
    """Bayesian Adversarial Learning: S_θ weight-posterior chains trained against SGLD adversaries.

    ``bal.step(x, y)`` runs one Gibbs iteration (the module docstring) and returns the chains' mean
    cross-entropy on the adversarial batch (detached). BAL *is* the optimiser: it owns its chains
    (copies of ``model`` made at construction, the paper's initialisation from a trained model)
    and back-propagates into them itself; ``model`` is never changed. The chains' forward passes of
    step 2 run in the mode the chains are in (``bal.ensemble.train()`` / ``.eval()``, train at
    construction); the adversary's under its own BatchNorm policy (eval by default).

    Args:
        model: the network whose posterior is sampled; copied ``chains`` times.
        data_size: N, the training-set size the batch loss is scaled to (the likelihood of all the
            data, as a posterior sampler needs).
        chains: S_θ ≥ 1 (the paper: 5).
        adversary: the data generator (:class:`SGLDAdversary`; its ``chains`` is S_x̃). Default:
            M = 15 steps of 0.01, α = 1, T = 10⁻⁵, images in [0, 1].
        lr, tau, friction, temperature: SGAdaLD's η, τ, C and T (the paper's T = 10⁻⁵ on MNIST).
        theta_steps: SGAdaLD steps per chain per iteration (≥ 1).
        prior_precision: λ ≥ 0 of the Gaussian prior ``N(0, λ⁻¹I)`` (0: flat).
        seed: seeds chain s's noise with ``seed + s``; required under several processes, where
            every process must draw the same noise for its copy of each chain.

    Under ``torch.distributed`` with several processes each holds every chain; step 2 averages
    each chain's gradient over the processes (each saw its share of the global batch) before the
    update, so the chains stay identical everywhere.

    ``bal.last`` (a :class:`robustreg.Record`, ``None`` before the first step) holds what the last
    finite step used: ``x_adv``, the adversarial batch (S_x̃·B rows, chain-major); ``steps``, the
    Langevin steps M; and ``metrics``: ``loss`` (what :meth:`step` returned), ``adv_acc`` (the
    chains' mean accuracy on that batch, before their last update), ``perturbation_l2`` and
    ``perturbation_linf`` (the mean over the rows of ‖x̃ − x‖₂ and ‖x̃ − x‖∞: how far the adversary
    moved the data, the figure to watch when choosing its step and α). A NaN step leaves it as it was.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        data_size: int,
        chains: int = 5,
        adversary: SGLDAdversary | None = None,
        lr: float = 0.01,
        tau: float = 100.0,
        friction: float = 0.05,
        temperature: float = 1e-5,
        theta_steps: int = 1,
        prior_precision: float = 0.0,
        seed: int | None = None,
    ) -> None:
        _checks.module("model", model)
        self.data_size = _checks.count("data_size", data_size, minimum=1)
        n_chains = _checks.count("chains", chains, minimum=1)
        if adversary is not None and not isinstance(adversary, SGLDAdversary):
            raise TypeError(f"adversary must be an SGLDAdversary or None, got {type(adversary).__name__}")
        self.theta_steps = _checks.count("theta_steps", theta_steps, minimum=1)
        self.prior_precision = _checks.nonneg_float("prior_precision", prior_precision)
        if seed is not None:
            seed = _checks.count("seed", seed)
        self.last: Record | None = None
        if seed is None and several_processes():
            raise ValueError("seed is required under several processes: each must draw the same chain noise")
        self.adversary = adversary if adversary is not None else SGLDAdversary()
        members = [copy.deepcopy(unwrap(model)) for _ in range(n_chains)]
        for member in members:
            member.train()
        self.ensemble = PosteriorEnsemble(members)
        device = next(iter(self.ensemble.parameters()), torch.empty(0)).device
        self.optimizers = []
        for s, member in enumerate(members):
            gen = None if seed is None else torch.Generator(device=device).manual_seed(seed + s)
            self.optimizers.append(
                SGAdaLD(member.parameters(), lr, tau=tau, friction=friction, temperature=temperature, generator=gen)
            )

    @property
    def chains(self) -> list[nn.Module]:
        """The S_θ posterior samples (the ensemble's members)."""
        return list(self.ensemble.members)

    def step(self, x: Tensor, y: Tensor) -> Tensor:
        """One Gibbs iteration on the batch; returns the mean over chains of their adversarial
        cross-entropy before their last SGAdaLD step, detached. A non-finite gradient in any chain
        at any of the ``theta_steps`` (a NaN step) leaves the iteration without effect, neither
        weights nor SGAdaLD's state move (earlier steps of the iteration are undone), and returns NaN."""
        x = _checks.check_x(x, self.adversary.bounds)
        y = _checks.check_y(y, x.shape[0])
        members = self.chains
        _checks.check_classes(y, _checks.classes_of(members[0], x))
        with inner_mode(self.ensemble, self.adversary.bn):
            x_adv, y_adv = self.adversary.sample(mean_log_likelihood(members), x, y)
        ces: list[Tensor] = []
        # with several SGAdaLD steps a later NaN must undo the earlier ones: keep the state to return to
        before = copy.deepcopy(self._chain_state()) if self.theta_steps > 1 else None
        for _ in range(self.theta_steps):
            ces, accs, updates = [], [], []
            for member in members:  # every chain's gradient first: a non-finite one changes nothing
                params = [p for p in member.parameters() if p.requires_grad]
                logits = member(x_adv)
                ce = F.cross_entropy(logits, y_adv)
                accs.append(accuracy(logits, y_adv))
                energy = self.data_size * ce
                if self.prior_precision:
                    energy = energy + 0.5 * self.prior_precision * sum(p.square().sum() for p in params)
                grads = all_reduce_mean(list(torch.autograd.grad(energy, params)))
                ces.append(ce.detach())
                updates.append((params, grads))
            if not all(bool(torch.isfinite(g).all()) for _, grads in updates for g in grads):
                # neither the weights nor SGAdaLD's V̂ move: the caller sees a NaN loss and skips the step
                if before is not None:
                    self._load_chain_state(before)
                return torch.full((), math.nan, dtype=x_adv.dtype, device=x_adv.device)
            for (params, grads), opt in zip(updates, self.optimizers, strict=True):
                for p, g in zip(params, grads, strict=True):
                    p.grad = g
                opt.step()
                for p in params:
                    p.grad = None
        loss = torch.stack(ces).mean()
        moved = (x_adv - x.repeat(x_adv.shape[0] // x.shape[0], *([1] * (x.dim() - 1)))).flatten(1)
        metrics = {
            "loss": loss,
            "adv_acc": torch.stack(accs).mean(),
            "perturbation_l2": moved.norm(dim=1).mean().detach(),
            "perturbation_linf": moved.abs().amax(dim=1).mean().detach(),
        }
        self.last = Record(x_adv.detach(), metrics, steps=self.adversary.steps)
        return loss

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """The posterior predictive ``(1/S_θ)·Σ_s softmax(f_s(x))``, ``(B, C)``, in eval mode (each
        member's mode restored)."""
        x = _checks.check_x(x, None)
        with inner_mode(self.ensemble, "eval"):
            return self.ensemble(x).exp()

    def _generators(self) -> list[torch.Generator | None]:
        return [self.adversary.generator, *(o.generator for o in self.optimizers)]

    def _chain_state(self) -> dict:
        return {"ensemble": self.ensemble.state_dict(), "optimizers": [o.state_dict() for o in self.optimizers]}

    def _load_chain_state(self, state: dict) -> None:
        self.ensemble.load_state_dict(state["ensemble"])
        for opt, s in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(copy.deepcopy(s))  # torch's would share V̂ with ``state``'s owner

    def state_dict(self) -> dict:
        """The chains, their samplers' state and the states of the random generators of the
        adversary and the samplers (for checkpoints: a resumed run draws the noise it would have
        drawn; torch's global generator, used where none was given, is the caller's to save)."""
        generators = [None if g is None else g.get_state() for g in self._generators()]
        return self._chain_state() | {"generators": generators}

    def load_state_dict(self, state: dict) -> None:
        """Load a :meth:`state_dict`; its random-generator states are checked first (a mismatched
        or damaged one raises ``ValueError`` before anything changes)."""
        gens, saved = self._generators(), state.get("generators")
        if saved is not None and [s is None for s in saved] != [g is None for g in gens]:
            raise ValueError(
                f"the state's random generators ({sum(s is not None for s in saved)} of {len(saved)}) do not "
                f"match this BAL's ({sum(g is not None for g in gens)} of {len(gens)}): build it with the same "
                "chains, seed and adversary generator"
            )
        for i, (g, s) in enumerate(zip(gens, saved or [], strict=False)):
            want = None if g is None else g.get_state()
            if want is not None and (not isinstance(s, Tensor) or s.dtype != want.dtype or s.shape != want.shape):
                raise ValueError(f"the state's random generator {i} is not a generator state of this device's kind")
        self._load_chain_state(state)
        for g, s in zip(gens, saved or [], strict=False):
            if g is not None:
                g.set_state(s.cpu())  # a generator's state is a CPU byte tensor, whatever its device
