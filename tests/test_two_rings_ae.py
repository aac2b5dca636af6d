"""The two-rings problem with an autoencoder chart learned from the unlabeled points: a circular
:class:`MLPAutoEncoder` has the rings' tangent everywhere, and TNAR with it beats VAT on a
shortened run of ``benchmarks/two_rings_ssl.py`` (same classifier and protocol)."""

import argparse
import math
import sys
from pathlib import Path

import pytest
import torch

from robustreg.charts import MLPAutoEncoder, load_chart, train_chart
from robustreg.data import rings_ssl

ROOT = Path(__file__).resolve().parents[1]


def _benchmark():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import two_rings_ssl
    finally:
        sys.path.pop(0)
    return two_rings_ssl


@pytest.fixture(scope="module")
def rings_and_chart():
    data = rings_ssl(1000, seed=0)
    torch.manual_seed(0)
    chart = MLPAutoEncoder((2,), latent=1, circular=True)
    train_chart(chart, data.x_unlabeled, epochs=20, seed=0)
    return data, chart.requires_grad_(False)


def test_circular_chart_is_periodic_and_round_trips_through_a_file(rings_and_chart, tmp_path):
    _, chart = rings_and_chart
    z = torch.linspace(-3, 3, 7)[:, None]
    assert torch.allclose(chart.decode(z + 2 * math.pi), chart.decode(z), atol=1e-5)
    assert chart.encode(torch.randn(5, 2)).abs().max() <= math.pi
    with pytest.warns(DeprecationWarning, match="deprecated"):  # the single-file format
        chart.save(tmp_path / "ae.pt")
    with pytest.warns(DeprecationWarning, match="deprecated"):
        loaded = load_chart(tmp_path / "ae.pt")
    assert loaded.circular and torch.equal(loaded.decode(z), chart.decode(z))


def test_learned_tangent_is_the_ring_tangent(rings_and_chart):
    data, chart = rings_and_chart
    x = data.x_unlabeled
    z, h = chart.encode(x), 1e-3
    jac = (chart.decode(z + h) - chart.decode(z - h)) / (2 * h)  # (N, 2): ∂decode/∂z by central differences
    theta = torch.atan2(x[:, 1], x[:, 0])
    true = torch.stack([-theta.sin(), theta.cos()], dim=1)
    cos = (jac * true).sum(1).abs() / jac.norm(dim=1)
    assert cos.median() > 0.95 and cos.quantile(0.05) > 0.9, (float(cos.median()), float(cos.quantile(0.05)))


def test_shortened_two_rings_tnar_with_the_learned_chart_beats_vat(rings_and_chart):
    data, chart = rings_and_chart
    bench = _benchmark()
    args = argparse.Namespace(steps=150, lr=1e-3, eps_vat=0.3, eps_tangent=1.0, eps_normal=0.05)
    _, vat = bench.train("vat", data, None, args, seed=0)
    _, tnar = bench.train("tnar-ae", data, chart, args, seed=0)
    assert tnar["unlabeled_accuracy"] >= 0.97, tnar
    assert tnar["unlabeled_accuracy"] > vat["unlabeled_accuracy"] + 0.2, (tnar, vat)
