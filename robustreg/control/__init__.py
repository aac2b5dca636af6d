"""Training as optimal control: Lyapunov-stable training by the method of successive
approximations (:class:`MSA`) and the spectral tools it uses."""

from .msa import CONSTRAINABLE, MSA, LayerReport, LayerRule, hamiltonian_step
from .plot import plot_eigenvalues
from .spectral import (
    AntisymmetricLinear,
    ResidualODEBlock,
    as_matrix,
    conv_circular_norm,
    conv_operator_norm,
    project_spectral,
    spectral_norm,
    spectral_radius,
)

__all__ = [
    "CONSTRAINABLE",
    "MSA",
    "AntisymmetricLinear",
    "LayerReport",
    "LayerRule",
    "ResidualODEBlock",
    "as_matrix",
    "conv_circular_norm",
    "conv_operator_norm",
    "hamiltonian_step",
    "plot_eigenvalues",
    "project_spectral",
    "spectral_norm",
    "spectral_radius",
]
