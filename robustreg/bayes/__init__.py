"""Bayesian adversarial learning (Ye and Zhu, "Bayesian Adversarial Learning", NeurIPS 2018):
:class:`BAL`, the Gibbs iterations between the adversarial-data sampler (:class:`SGLDAdversary`)
and S_θ chains of the weight-posterior sampler (:class:`SGAdaLD`, a ``torch.optim.Optimizer``
usable on its own for a plain Bayesian network), whose posterior predictive is a module
(:class:`PosteriorEnsemble`) that robustreg's evaluation attacks end to end."""

from .bal import BAL, PosteriorEnsemble
from .sgadald import SGAdaLD
from .sgld import SGLDAdversary, mean_log_likelihood, squared_l2

__all__ = ["BAL", "PosteriorEnsemble", "SGAdaLD", "SGLDAdversary", "mean_log_likelihood", "squared_l2"]
