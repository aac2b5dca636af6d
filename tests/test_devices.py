"""The device seam (robustreg.devices): the hand-written CPU kernels run only on KERNEL_DEVICES;
elsewhere the generic torch.func path computes the same products. Other devices are imitated
on the CPU by emptying KERNEL_DEVICES."""

import pytest
import torch
from torch import nn

import robustreg.devices
from robustreg import TNAR, YOPO
from robustreg.adversarial.first_layer import FirstLayer
from robustreg.charts import VAE, LocalizedGAN
from robustreg.charts.base import FuncLinearization, Linearization, chart_at, linearization

D = torch.float64


@pytest.fixture
def elsewhere(monkeypatch):
    """Every tensor counts as on a device without kernels; a first-layer kernel call fails the test."""
    monkeypatch.setattr(robustreg.devices, "KERNEL_DEVICES", frozenset())

    def refused(*args, **kwargs):
        raise AssertionError("a hand-written kernel ran off KERNEL_DEVICES")

    monkeypatch.setattr(FirstLayer, "_reverse", refused)


def test_uses_kernels_on_the_cpu_only():
    assert robustreg.devices.uses_kernels(torch.zeros(1))
    assert not robustreg.devices.uses_kernels(torch.zeros(1, device="meta"))


def first_layer_products(layer, z, p):
    f0 = FirstLayer(layer)
    pullback = f0.pullback(p)
    first = pullback(z).clone()  # the next call overwrites the pullback's buffers
    return f0.input_vjp(z, p), f0.param_grad(z, p), first, pullback(0.5 * z)


def reference_products(layer, z, p):
    def vjp(at):
        return torch.func.vjp(layer, at)[1](p)[0]

    grads = torch.autograd.grad((layer(z) * p).sum(), list(layer.parameters()))
    return vjp(z), dict(zip(dict(layer.named_parameters()), grads, strict=True)), vjp(z), vjp(0.5 * z)


@pytest.mark.parametrize("where", ["cpu kernels", "elsewhere"])
def test_first_layer_products_on_either_side_of_the_seam(where, request):
    if where == "elsewhere":
        request.getfixturevalue("elsewhere")
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.ReLU()).double()
    z = torch.randn(4, 2, 9, 9, dtype=D)
    p = torch.randn_like(layer(z))
    got, want = first_layer_products(layer, z, p), reference_products(layer, z, p)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer_one = nn.Sequential(nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.ReLU())
        self.rest = nn.Sequential(nn.Flatten(), nn.Linear(3 * 5 * 5, 4))

    def forward(self, x):
        return self.rest(self.layer_one(x))


def yopo_result(model, x, y):
    torch.manual_seed(1)
    reg = YOPO(model, m=3, n=4, eps=0.3, alpha=0.1)
    loss = reg(x, y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return loss.detach(), reg.last.x_adv, grads


def test_yopo_is_the_same_through_the_generic_path(monkeypatch):
    torch.manual_seed(0)
    model = Net().double()
    x, y = torch.rand(6, 1, 9, 9, dtype=D), torch.randint(0, 4, (6,))
    kernels = yopo_result(model, x, y)
    monkeypatch.setattr(robustreg.devices, "KERNEL_DEVICES", frozenset())
    generic = yopo_result(model, x, y)
    torch.testing.assert_close(kernels[0], generic[0])
    torch.testing.assert_close(kernels[1], generic[1])
    for a, b in zip(kernels[2], generic[2], strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kind", ["vae", "lgan"])
def test_chart_linearization_takes_the_generic_path_off_the_kernel_devices(kind, monkeypatch):
    torch.manual_seed(0)
    chart = (VAE((1, 8, 8), latent=3, width=4) if kind == "vae" else LocalizedGAN((1, 8, 8), latent=3, width=4)).to(D)
    chart.requires_grad_(False)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4)).to(D)
    x = torch.rand(5, 1, 8, 8, dtype=D)
    z, decode, linearize = chart_at(chart, x)
    assert linearize is not None
    assert isinstance(linearization(decode, z, linearize), Linearization)

    def tnar():
        torch.manual_seed(2)
        reg = TNAR(model, chart, eps_tangent=0.5, eps_normal=0.5, cg_iters=3)
        return reg(x), reg.last.r_tangent, reg.last.r_normal

    with_kernels = tnar()
    monkeypatch.setattr(robustreg.devices, "KERNEL_DEVICES", frozenset())
    assert isinstance(linearization(decode, z, linearize), FuncLinearization)
    for a, b in zip(with_kernels, tnar(), strict=True):
        torch.testing.assert_close(a, b)


def test_kernels_forces_either_path_and_nests():
    cpu, meta = torch.zeros(1), torch.zeros(1, device="meta")
    uses = robustreg.devices.uses_kernels
    with robustreg.devices.kernels("off"):
        assert not uses(cpu)
        with robustreg.devices.kernels("on"):
            assert uses(cpu) and uses(meta)
            with robustreg.devices.kernels("auto"):  # back to the device rule
                assert uses(cpu) and not uses(meta)
        assert not uses(cpu)
    assert uses(cpu) and not uses(meta)
    with pytest.raises(RuntimeError), robustreg.devices.kernels("off"):
        raise RuntimeError  # the block is left by an exception: the setting is undone
    assert uses(cpu)
    with pytest.raises(ValueError, match="mode must be one of"), robustreg.devices.kernels("generic"):
        pass
    assert uses(cpu)


def test_forcing_the_generic_path_on_the_cpu_gives_the_same_yopo(monkeypatch):
    torch.manual_seed(0)
    model = Net().double()
    x, y = torch.rand(6, 1, 9, 9, dtype=D), torch.randint(0, 4, (6,))
    kernels = yopo_result(model, x, y)

    def refused(*args, **kwargs):
        raise AssertionError("a hand-written kernel ran inside kernels('off')")

    monkeypatch.setattr(FirstLayer, "_reverse", refused)
    with robustreg.devices.kernels("off"):
        generic = yopo_result(model, x, y)
    for a, b in zip([kernels[0], kernels[1], *kernels[2]], [generic[0], generic[1], *generic[2]], strict=True):
        torch.testing.assert_close(a, b)
