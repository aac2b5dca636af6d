"""Interpreting adversarially trained CNNs (Zhang and Zhu, "Interpreting Adversarially Trained
Convolutional Neural Networks", ICML 2019): saliency maps (:func:`input_gradient`,
:func:`smooth_grad`), transforms that remove texture or shape (:func:`saturate`,
:func:`patch_shuffle`), the paper's accuracy on correctly classified images
(:func:`accuracy_on_correct`) and measures of a map's shape (:func:`gini`, :func:`edge_mass`) and the study's figures
(:func:`plot_saliency`, :func:`plot_transforms`, :func:`plot_accuracy_on_correct`).
``recipes/interpret.py`` runs the paper's study; ``docs/interpret.md`` shows what it finds."""

from ..evaluate import OnCorrect, accuracy_on_correct
from .measures import edge_mass, gini, sobel_magnitude
from .plot import plot_accuracy_on_correct, plot_saliency, plot_transforms
from .saliency import input_gradient, saliency_image, smooth_grad
from .transforms import PatchShuffle, Saturate, patch_shuffle, saturate

__all__ = [
    "OnCorrect",
    "PatchShuffle",
    "Saturate",
    "accuracy_on_correct",
    "edge_mass",
    "gini",
    "input_gradient",
    "patch_shuffle",
    "plot_accuracy_on_correct",
    "plot_saliency",
    "plot_transforms",
    "saliency_image",
    "saturate",
    "smooth_grad",
    "sobel_magnitude",
]
