"""Learned charts: training lowers their loss, they save and load safely, and TNAR's
perturbations with one are tangent / normal to its explicit Jacobian."""

import pytest
import torch
from torch import nn
from torch.func import jacrev

from robustreg import TNAR
from robustreg.charts import VAE, AutoEncoder, load_chart, train_chart

D = torch.float64


def smooth_images(n: int, side: int = 8, seed: int = 0) -> torch.Tensor:
    """Images on a one-dimensional manifold: blends t·(horizontal ramp) + (1 − t)·(vertical ramp)."""
    t = torch.rand(n, 1, 1, 1, generator=torch.Generator().manual_seed(seed))
    ramp = torch.linspace(0, 1, side)
    return t * ramp.view(1, 1, 1, side) + (1 - t) * ramp.view(1, 1, side, 1)  # (n, 1, side, side)


@pytest.mark.parametrize("cls", [VAE, AutoEncoder])
def test_training_lowers_the_loss_and_the_chart_round_trips_through_a_file(cls, tmp_path):
    torch.manual_seed(0)
    chart = cls((1, 8, 8), latent=4, width=8)
    images = smooth_images(256)

    def error():  # mean squared reconstruction error through the chart
        with torch.no_grad():
            return float((chart.decode(chart.encode(images)) - images).pow(2).mean())

    before = error()
    history = train_chart(chart, images, epochs=40, batch_size=64, lr=3e-3)
    assert history[-1] < history[0] and error() < 0.1 * before
    assert not chart.training
    with pytest.warns(DeprecationWarning, match="deprecated"):  # the single-file format
        chart.save(tmp_path / "chart.pt")
    with pytest.warns(DeprecationWarning, match="deprecated"):
        again = load_chart(tmp_path / "chart.pt")
    assert type(again) is cls and again.config == chart.config
    x = images[:5]
    torch.testing.assert_close(again.decode(again.encode(x)), chart.decode(chart.encode(x)))
    assert chart.encode(x).shape == (5, 4) and chart.decode(chart.encode(x)).shape == (5, 1, 8, 8)


def test_bad_shapes_and_files(tmp_path):
    with pytest.raises(ValueError, match="multiples of 4"):
        VAE((1, 30, 30))
    with pytest.raises(ValueError, match="image_shape"):
        AutoEncoder((28, 28))
    with pytest.raises(ValueError, match="images must be"):
        train_chart(VAE((1, 8, 8), latent=2), torch.rand(4, 1, 12, 12))
    torch.save({"kind": "gan", "config": {}, "state": {}}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a robustreg chart"), pytest.warns(DeprecationWarning):
        load_chart(tmp_path / "x.pt")


def test_tnar_perturbations_with_a_vae_chart_follow_its_jacobian():
    torch.manual_seed(0)
    chart = VAE((1, 8, 8), latent=3, width=4).to(D).eval()
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 3)).to(D)
    x = smooth_images(4).to(D)
    reg = TNAR(model, chart, eps_tangent=0.5, eps_normal=0.25, n_power=2, cg_iters=3)
    reg(x)
    z = chart.encode(x).detach()
    for i in range(4):
        jac = jacrev(lambda t: chart.decode(t[None]).flatten())(z[i]).detach()  # (64, 3)
        proj = jac @ torch.linalg.solve(jac.t() @ jac, jac.t())
        r_t, r_n = reg.last.r_tangent[i].flatten(), reg.last.r_normal[i].flatten()
        assert float(r_t.norm()) == pytest.approx(0.5, rel=1e-6)
        assert float(r_n.norm()) == pytest.approx(0.25, rel=1e-6)
        torch.testing.assert_close(proj @ r_t, r_t, atol=1e-6, rtol=0)  # tangent
        torch.testing.assert_close(jac.t() @ r_n, torch.zeros(3, dtype=D), atol=1e-6, rtol=0)  # normal


def test_vae_kl_weight_scales_the_elbos_kl_term_and_is_saved(tmp_path):
    from robustreg.checkpoint import save_model

    torch.manual_seed(0)
    chart = VAE((1, 8, 8), latent=3, width=4, kl_weight=0.5).to(D)
    x = smooth_images(6).to(D)
    torch.manual_seed(1)
    loss = chart.loss(x)
    torch.manual_seed(1)  # the same reparametrisation draw, written out
    mu, logvar = chart.posterior(x)
    z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
    recon = nn.functional.binary_cross_entropy(chart.decode(z), x, reduction="sum")
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum()
    torch.testing.assert_close(loss, (recon + 0.5 * kl) / 6)
    save_model(chart, tmp_path / "vae")
    again = load_chart(tmp_path / "vae")
    assert again.kl_weight == 0.5 and again.config["kl_weight"] == 0.5
    assert "kl_weight" not in VAE((1, 8, 8), latent=3, width=4).config  # the ELBO's: saved as before
    with pytest.raises(ValueError, match="kl_weight"):
        VAE((1, 8, 8), kl_weight=-1.0)
