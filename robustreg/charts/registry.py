"""The chart classes by the ``kind`` their files record: one literal registry, read by
:func:`robustreg.checkpoint.load_model` (charts saved as models) and by the reader of the
deprecated single-file format."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .learned import VAE, AutoEncoder, MLPAutoEncoder
from .lgan import LocalizedGAN

#: ``kind`` -> chart class, for every chart robustreg can save and load.
CHARTS: dict[str, type[nn.Module]] = {
    AutoEncoder.kind: AutoEncoder,
    VAE.kind: VAE,
    MLPAutoEncoder.kind: MLPAutoEncoder,
    LocalizedGAN.kind: LocalizedGAN,
}


def load_chart_file(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """A chart in the deprecated single-file format of ``chart.save(path)``, rebuilt from its config
    (a ``weights_only`` load: no code runs). :func:`robustreg.charts.load_chart` reads both formats."""
    blob = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(blob, dict) or blob.get("kind") not in CHARTS:
        raise ValueError(f"{path} is not a robustreg chart file")
    chart = CHARTS[blob["kind"]](**blob["config"])
    chart.load_state_dict(blob["state"])
    return chart.eval()
