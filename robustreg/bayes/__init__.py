"""Bayesian adversarial learning (Ye and Zhu, "Bayesian Adversarial Learning", NeurIPS 2018): the
adversarial-data sampler (:class:`SGLDAdversary`) and the weight-posterior sampler
(:class:`SGAdaLD`, a ``torch.optim.Optimizer`` usable on its own for a plain Bayesian network)."""

from .sgadald import SGAdaLD
from .sgld import SGLDAdversary, mean_log_likelihood, squared_l2

__all__ = ["SGAdaLD", "SGLDAdversary", "mean_log_likelihood", "squared_l2"]
