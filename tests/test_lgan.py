"""The Localized GAN chart: training makes x lie on its own chart with an orthonormal tangent
basis, the penalties match explicit Jacobians, it saves and loads, and TNAR's perturbations with
it are tangent / normal to ∂G(x, z)/∂z at z = 0."""

import math

import pytest
import torch
from torch import nn
from torch.func import jacrev

from robustreg import TNAR
from robustreg.charts import LocalizedGAN, load_chart, train_lgan

D = torch.float64


def smooth_images(n: int, side: int = 8, seed: int = 0) -> torch.Tensor:
    """Images on a one-dimensional manifold: blends t·(horizontal ramp) + (1 − t)·(vertical ramp)."""
    t = torch.rand(n, 1, 1, 1, generator=torch.Generator().manual_seed(seed))
    ramp = torch.linspace(0, 1, side)
    return t * ramp.view(1, 1, 1, side) + (1 - t) * ramp.view(1, 1, side, 1)  # (n, 1, side, side)


def jacobian(lgan: LocalizedGAN, x: torch.Tensor) -> torch.Tensor:
    """The explicit ∂G(x, z)/∂z at z = 0 of one sample x (C, H, W), as (C·H·W, latent)."""
    z0 = x.new_zeros(lgan.latent)
    return jacrev(lambda z: lgan(x[None], z[None]).flatten())(z0)


def explicit_errors(lgan: LocalizedGAN, x: torch.Tensor) -> tuple[float, float]:
    """Mean ‖G(x, 0) − x‖₂ and mean ‖JᵀJ − I‖_F over the batch, from explicit Jacobians."""
    with torch.no_grad():
        locality = (lgan(x, x.new_zeros(len(x), lgan.latent)) - x).flatten(1).norm(dim=1).mean()
    eye = torch.eye(lgan.latent, dtype=x.dtype)
    ortho = [(jacobian(lgan, xi).t() @ jacobian(lgan, xi) - eye).norm().detach() for xi in x]
    return float(locality), float(torch.stack(ortho).mean())


def test_tangents_and_penalties_equal_explicit_jacobians_and_their_gradients():
    lgan = LocalizedGAN((1, 8, 8), latent=3, width=4).to(D)
    x = smooth_images(3).to(D)
    params = lgan.generator_parameters()
    cols = lgan.tangents(x)  # (3, latent, 1, 8, 8)
    jacs = [jacobian(lgan, xi) for xi in x]  # differentiable in the parameters too
    for i in range(3):
        torch.testing.assert_close(cols[i].flatten(1).t(), jacs[i], atol=1e-12, rtol=0)
    eye = torch.eye(3, dtype=D)
    explicit = torch.stack([(j.t() @ j - eye).pow(2).sum() for j in jacs])
    penalty = lgan.orthonormality_error(x)
    torch.testing.assert_close(penalty, explicit, atol=1e-12, rtol=1e-10)
    # the matrix-free penalty trains G: its gradient is the explicit one's
    grads = torch.autograd.grad(penalty.sum(), params)
    expected = torch.autograd.grad(explicit.sum(), params)
    assert any(float(g.abs().max()) > 0 for g in grads)
    for g, e in zip(grads, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-10, rtol=1e-8)
    with torch.no_grad():
        torch.testing.assert_close(lgan.locality_error(x), (lgan(x, x.new_zeros(3, 3)) - x).pow(2).sum((1, 2, 3)))


def test_training_puts_x_on_its_chart_with_an_orthonormal_tangent_basis():
    lgan = LocalizedGAN((1, 8, 8), latent=2, width=8)
    images = smooth_images(128)
    loc_before, ortho_before = explicit_errors(lgan, images[:8])
    history = train_lgan(lgan, images, epochs=15, batch_size=32, lr=1e-2)  # 60 steps
    loc_after, ortho_after = explicit_errors(lgan, images[:8])
    assert not lgan.training
    assert len(history) == 15 and set(history[0]) == {"d", "gan", "locality", "orthonormality", "loss"}
    assert history[-1]["locality"] < 0.1 * history[0]["locality"]
    assert loc_after < 0.25 * loc_before, (loc_before, loc_after)
    assert ortho_after < 0.25 * ortho_before, (ortho_before, ortho_after)


def test_the_chart_round_trips_through_a_file(tmp_path):
    lgan = LocalizedGAN((1, 8, 8), latent=3, width=4)
    train_lgan(lgan, smooth_images(32), epochs=1, batch_size=16)
    with pytest.warns(DeprecationWarning, match="deprecated"):  # the single-file format
        lgan.save(tmp_path / "lgan.pt")
    with pytest.warns(DeprecationWarning, match="deprecated"):
        again = load_chart(tmp_path / "lgan.pt")
    assert type(again) is LocalizedGAN and again.config == lgan.config and not again.training
    x, z = smooth_images(5, seed=1), torch.randn(5, 3)
    assert torch.equal(again(x, z), lgan(x, z))
    assert torch.equal(again.discriminate(x), lgan.discriminate(x))
    z0, decode = again.at(x)
    assert torch.equal(z0, torch.zeros(5, 3)) and torch.equal(decode(z), lgan(x, z))


def test_tnar_perturbations_with_a_localized_gan_follow_its_jacobian():
    latent = 3
    lgan = LocalizedGAN((1, 8, 8), latent=latent, width=4).to(D).eval()
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 3)).to(D)
    x = smooth_images(4).to(D)
    reg = TNAR(model, lgan, eps_tangent=0.5, eps_normal=0.25, n_power=2, cg_iters=latent, tangent="linear")
    loss = reg(x)
    assert math.isfinite(float(loss.detach()))
    for i in range(4):
        jac = jacobian(lgan, x[i]).detach()  # (64, latent)
        proj = jac @ torch.linalg.solve(jac.t() @ jac, jac.t())
        r_t, r_n = reg.last.r_tangent[i].flatten(), reg.last.r_normal[i].flatten()
        assert float(r_t.norm()) == pytest.approx(0.5, rel=1e-6)
        assert float(r_n.norm()) == pytest.approx(0.25, rel=1e-6)
        torch.testing.assert_close(proj @ r_t, r_t, atol=1e-6, rtol=0)  # in the span of J_x
        torch.testing.assert_close(jac.t() @ r_n, torch.zeros(latent, dtype=D), atol=1e-6, rtol=0)  # ⊥ J_x


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"lr": -1e-3}, "lr"),
        ({"sigma": -1.0}, "sigma"),
        ({"locality": -1.0}, "locality"),
        ({"orthonormality": float("nan")}, "orthonormality"),
        ({"jacobian_batch": 0}, "jacobian_batch"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_training_arguments_name_the_argument(kwargs, name):
    lgan = LocalizedGAN((1, 8, 8), latent=2, width=4)
    with pytest.raises(ValueError, match=name):
        train_lgan(lgan, smooth_images(8), **kwargs)


def test_bad_shapes_and_images():
    with pytest.raises(ValueError, match="multiples of 4"):
        LocalizedGAN((1, 30, 30))
    with pytest.raises(ValueError, match="image_shape"):
        LocalizedGAN((28, 28))
    with pytest.raises(ValueError, match="latent"):
        LocalizedGAN((1, 8, 8), latent=0)
    with pytest.raises(ValueError, match="width"):
        LocalizedGAN((1, 8, 8), width=0)
    lgan = LocalizedGAN((1, 8, 8), latent=2, width=4)
    with pytest.raises(ValueError, match="images must be"):
        train_lgan(lgan, torch.rand(4, 1, 12, 12))
    with pytest.raises(ValueError, match="images"):
        train_lgan(lgan, 2 * smooth_images(4))  # outside [0, 1]
    with pytest.raises(TypeError, match="lgan"):
        train_lgan(nn.Linear(2, 2), smooth_images(4))
