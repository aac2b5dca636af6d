"""The charts' own Jacobian products (``linearize``) against explicit Jacobians, the fast
transposed convolution against ``F.conv_transpose2d``, and TNAR with them against TNAR through
``torch.func``."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jacrev

from robustreg import TNAR
from robustreg.charts import VAE, AutoEncoder, LocalizedGAN
from robustreg.charts.linearize import conv_transpose, sigmoid_stack, subpixel_weight

D = torch.float64


@pytest.mark.parametrize(
    ("c_in", "c_out", "kernel", "stride", "padding"),
    [
        (6, 1, 4, 2, 1),  # the charts' image layer: sub-pixel
        (5, 3, 4, 2, 1),
        (4, 2, 3, 1, 1),
        (3, 2, 6, 2, 2),
        (4, 3, 5, 3, 1),
        (6, 8, 4, 2, 1),  # more than four outputs: channels-last conv_transpose2d
        (4, 2, 3, 2, 1),  # output 2H − 1: no sub-pixel form
    ],
)
@pytest.mark.parametrize("bias", [True, False])
def test_conv_transpose_equals_the_reference(c_in, c_out, kernel, stride, padding, bias):
    torch.manual_seed(0)
    layer = nn.ConvTranspose2d(c_in, c_out, kernel, stride, padding).to(D)
    assert (subpixel_weight(layer) is not None) == (kernel - 2 * padding == stride)
    x = torch.randn(3, c_in, 5, 7, dtype=D)
    expected = F.conv_transpose2d(x, layer.weight, layer.bias if bias else None, stride, padding)
    out = conv_transpose(x, layer, bias=bias)
    assert out.is_contiguous()
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(conv_transpose(x, layer, bias=bias, contiguous=False), expected)  # any format


def explicit_jacobian(decode, z):  # (B, latent) -> (B, D, latent), per sample
    jac = jacrev(lambda z: decode(z).flatten(1))(z)  # (B, D, B, latent)
    return torch.stack([jac[i, :, i] for i in range(z.shape[0])])


def charts_and_points():
    torch.manual_seed(0)
    vae = VAE((1, 8, 8), latent=3, width=4).to(D)
    wide = VAE((1, 8, 8), latent=3, width=6).to(D)  # its hidden layer (12 → 6) runs channels-last
    ae = AutoEncoder((3, 8, 8), latent=2, width=3).to(D)
    lgan = LocalizedGAN((1, 8, 8), latent=3, width=4).to(D)
    out = []
    for chart in (vae, wide, ae):
        x = torch.rand(4, *chart.image_shape, dtype=D)
        out.append((chart.decode, chart.linearize, chart.encode(x).detach()))
    z0, decode = lgan.at(torch.rand(4, 1, 8, 8, dtype=D))
    out.append((decode, decode.linearize, z0 + 0.3 * torch.randn_like(z0)))
    return out


@pytest.mark.parametrize("case", range(4), ids=["vae", "vae-wide", "ae", "lgan"])
def test_linearize_products_equal_the_explicit_jacobian(case):
    decode, linearize, z = charts_and_points()[case]
    jac = explicit_jacobian(decode, z)
    point, jvp, vjp = linearize(z)
    torch.testing.assert_close(point, decode(z))
    v = torch.randn_like(z)
    u = torch.randn_like(point)
    assert point.is_contiguous() and jvp(v).is_contiguous() and vjp(u).is_contiguous()
    torch.testing.assert_close(jvp(v).flatten(1), torch.einsum("bdl,bl->bd", jac, v))
    torch.testing.assert_close(vjp(u), torch.einsum("bdl,bd->bl", jac, u.flatten(1)))
    assert not jvp(v).requires_grad and not vjp(u).requires_grad


class Hidden:
    """The same chart without ``linearize``: TNAR falls back to torch.func."""

    def __init__(self, chart):
        self.chart = chart

    def encode(self, x):
        return self.chart.encode(x)

    def decode(self, z):
        return self.chart.decode(z)


class HiddenLocal:
    def __init__(self, chart):
        self.chart = chart

    def at(self, x):
        z, decode = self.chart.at(x)
        return z, lambda z: decode(z)


@pytest.mark.parametrize("kind", ["vae", "lgan"])
@pytest.mark.parametrize("tangent", ["linear", "manifold"])
def test_tnar_with_the_charts_products_equals_tnar_through_torch_func(kind, tangent):
    torch.manual_seed(1)
    chart = (VAE((1, 8, 8), latent=3, width=4) if kind == "vae" else LocalizedGAN((1, 8, 8), latent=3, width=4)).to(D)
    chart.requires_grad_(False)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 4)).to(D)
    x = torch.rand(6, 1, 8, 8, dtype=D)
    hidden = Hidden(chart) if kind == "vae" else HiddenLocal(chart)
    results = []
    for c in (chart, hidden):
        reg = TNAR(model, c, eps_tangent=0.5, eps_normal=0.5, cg_iters=3, tangent=tangent)
        torch.manual_seed(2)
        loss = reg(x)
        results.append((loss, reg.last.r_tangent, reg.last.r_normal))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b)


def test_sigmoid_stack_refuses_layers_it_cannot_linearize():
    with pytest.raises(TypeError, match="Tanh"):
        sigmoid_stack(nn.Sequential(nn.Tanh()), torch.zeros(1, 2, 3, 3))
    layer = nn.ConvTranspose2d(2, 1, 3, 2, 1, output_padding=1)
    with pytest.raises(ValueError, match="output_padding"):
        sigmoid_stack(nn.Sequential(layer), torch.zeros(1, 2, 3, 3))


def test_a_subclass_with_its_own_decoder_is_not_linearized_by_the_parents_products():
    class Flipped(VAE):
        def decode(self, z):
            return super().decode(z).flip(-1)  # another tangent space

    class FlippedGAN(LocalizedGAN):
        def _generate(self, h, z):
            return super()._generate(h, z).flip(-1)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4)).to(D)
    x = torch.rand(3, 1, 8, 8, dtype=D)
    for chart, plain in ((Flipped((1, 8, 8), 3, 4), Hidden), (FlippedGAN((1, 8, 8), 3, 4), HiddenLocal)):
        chart = chart.to(D).requires_grad_(False)
        results = []
        for c in (chart, plain(chart)):
            reg = TNAR(model, c, eps_tangent=0.5, eps_normal=0.5, cg_iters=3)
            torch.manual_seed(2)
            results.append((reg(x), reg.last.r_tangent, reg.last.r_normal))
        for a, b in zip(*results, strict=True):
            torch.testing.assert_close(a, b)
