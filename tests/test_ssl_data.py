"""Semi-supervised data utilities and oracle charts."""

import itertools

import pytest
import torch
from torch import nn
from torch.func import jacrev

from robustreg import TNAR
from robustreg.charts import LinearChart, RingsChart
from robustreg.data import cycle_batches, label_split, rings_ssl


def test_label_split_is_reproducible_and_balanced():
    y = torch.arange(10).repeat(30)
    a, rest = label_split(y, 4, seed=7)
    b, _ = label_split(y, 4, seed=7)
    c, _ = label_split(y, 4, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.bincount(y[a]).tolist() == [4] * 10
    assert len(set(a.tolist()) | set(rest.tolist())) == len(y) and not set(a.tolist()) & set(rest.tolist())
    with pytest.raises(ValueError, match="per_class"):
        label_split(y, 31, seed=0)


def test_cycle_batches_cycles_the_small_labeled_set():
    xl, yl = torch.arange(6.0)[:, None], torch.arange(6)
    xu = torch.arange(100.0)[:, None] + 1000
    batches = list(itertools.islice(cycle_batches((xl, yl), xu, batch_labeled=4, batch_unlabeled=10, seed=0), 30))
    assert all(b[0].shape == (4, 1) and b[2].shape == (10, 1) for b in batches)
    assert all(torch.equal(b[0][:, 0].long(), b[1]) for b in batches)  # pairs stay together
    seen = torch.cat([b[2] for b in batches[:10]])[:, 0]
    assert sorted(seen.tolist()) == list(range(1000, 1100))  # one pass over the unlabeled set per 10 steps


def test_rings_ssl_points_lie_on_their_rings_and_the_oracle_chart_recovers_them():
    d = rings_ssl(200, labeled_per_class=3, radii=(1.0, 2.0), dim=7, seed=1)
    torch.testing.assert_close(d.embedding.t() @ d.embedding, torch.eye(2), atol=1e-6, rtol=0)
    assert d.y_labeled.tolist() == [0, 0, 0, 1, 1, 1]
    x, y = torch.cat([d.x_labeled, d.x_unlabeled]), torch.cat([d.y_labeled, d.y_unlabeled])
    torch.testing.assert_close((x @ d.embedding).norm(dim=1), torch.tensor([1.0, 2.0])[y])
    chart = RingsChart(d.embedding, d.radii)
    z = chart.encode(x)
    assert torch.equal(z[:, 1].long(), y)
    torch.testing.assert_close(chart.decode(z), x, atol=1e-5, rtol=0)
    # the tangent: ∂decode/∂θ is the ring's direction E·r(−sin θ, cos θ); ∂decode/∂k = 0
    jac = jacrev(lambda t: chart.decode(t[None])[0])(z[0])  # (7, 2)
    theta, r = z[0, 0], torch.tensor(d.radii)[y[0]]
    torch.testing.assert_close(jac[:, 0], d.embedding @ torch.stack([-r * theta.sin(), r * theta.cos()]))
    assert torch.equal(jac[:, 1], torch.zeros(7))


def test_tnar_with_the_rings_chart_perturbs_along_and_across_the_ring():
    d = rings_ssl(16, dim=5, seed=2)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 2))
    reg = TNAR(model, RingsChart(d.embedding, d.radii), eps_tangent=0.3, eps_normal=0.2, n_power=3)
    reg(d.x_unlabeled)
    plane = d.x_unlabeled @ d.embedding  # (B, 2)
    tangent = torch.stack([-plane[:, 1], plane[:, 0]], 1) / plane.norm(dim=1, keepdim=True)
    r_t, r_n = reg.last.r_tangent, reg.last.r_normal
    torch.testing.assert_close((r_t @ d.embedding * tangent).sum(1).abs(), torch.full((16,), 0.3), atol=1e-4, rtol=0)
    torch.testing.assert_close((r_n @ d.embedding * tangent).sum(1), torch.zeros(16), atol=1e-4, rtol=0)
    torch.testing.assert_close(r_n.norm(dim=1), torch.full((16,), 0.2), atol=1e-5, rtol=0)


def test_linear_chart_round_trip_and_bad_shapes():
    torch.manual_seed(0)
    chart = LinearChart(torch.randn(6, 2), torch.randn(6))
    z = torch.randn(3, 2)
    torch.testing.assert_close(chart.encode(chart.decode(z)), z, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="a must be"):
        LinearChart(torch.randn(6), torch.randn(6))
    with pytest.raises(ValueError, match="embedding"):
        RingsChart(torch.randn(6, 3), (1.0, 2.0))
