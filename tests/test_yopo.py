"""YOPO against a slow, literal implementation of the issue's / paper's steps."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustreg import YOPO
from robustreg.adversarial.first_layer import FirstLayer, find_first_layer
from robustreg.models import Normalize, SmallCNN, preact_resnet18


class Net(nn.Module):
    """f = g ∘ f0 with f0 = conv + ReLU (``relu=True``) or a bare, affine conv."""

    def __init__(self, relu: bool) -> None:
        super().__init__()
        conv = nn.Conv2d(1, 3, 3, stride=2, padding=1)
        self.layer_one = nn.Sequential(conv, nn.ReLU()) if relu else conv
        self.rest = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 2 * 2, 5))

    def forward(self, x):
        return self.rest(self.layer_one(x))


def slow_yopo(model, x, y, *, m, n, eps, alpha, mode):
    """Steps 1-3 of the issue, with plain autograd and .backward() on a copy of the model."""
    model = copy.deepcopy(model)
    f0, names0 = model.layer_one, {f"layer_one.{k}" for k, _ in model.layer_one.named_parameters()}
    total = {k: torch.zeros_like(p) for k, p in model.named_parameters()}
    eta = torch.zeros_like(x)
    for _ in range(m):
        model.zero_grad()
        x1 = f0(x + eta)
        x1.retain_grad()
        F.cross_entropy(model.rest(x1), y).backward()
        p = x1.grad.detach()
        for k, prm in model.named_parameters():
            if not (mode == "hamiltonian" and k in names0):
                total[k] += prm.grad
        for _ in range(n):
            e = eta.clone().requires_grad_(True)
            (g,) = torch.autograd.grad((f0(x + e) * p).sum(), e)
            eta = (eta + alpha * g.sign()).clamp(-eps, eps)
            eta = (x + eta).clamp(0, 1) - x
        if mode == "hamiltonian":
            model.zero_grad()
            (f0(x + eta) * p).sum().backward()
            for k, prm in model.layer_one.named_parameters():
                total[f"layer_one.{k}"] += prm.grad
    return {k: v / m for k, v in total.items()}, eta


@pytest.mark.parametrize("relu", [True, False], ids=["conv+relu", "affine"])
@pytest.mark.parametrize("mode", ["hamiltonian", "backprop"])
def test_gradient_equals_the_literal_algorithm(relu, mode):
    torch.manual_seed(0)
    model = Net(relu).double()
    x = torch.rand(6, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 5, (6,))
    expected, eta = slow_yopo(model, x, y, m=3, n=4, eps=0.2, alpha=0.07, mode=mode)
    reg = YOPO(model, m=3, n=4, eps=0.2, alpha=0.07, random_start=False, first_layer=model.layer_one,
               first_layer_grad=mode)  # fmt: skip
    loss = reg(x, y)
    loss.backward()
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[k], msg=k)
    torch.testing.assert_close(reg.last.x_adv, x + eta)
    assert reg._f0.fast and reg._f0.affine == (not relu)


@pytest.mark.parametrize("mode", ["hamiltonian", "backprop"])
def test_m1_n0_is_plain_cross_entropy_training(mode):
    model = SmallCNN().double().eval()  # eval: dropout off, so both sides see one function
    nn.init.normal_(model.classifier[-1].weight, std=0.1)
    x, y = torch.rand(5, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (5,))
    reg = YOPO(model, m=1, n=0, random_start=False, first_layer=model.layer_one, first_layer_grad=mode, bn="eval")
    loss = reg(x, y)
    loss.backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ref = F.cross_entropy(model(x), y)
    ref.backward()
    torch.testing.assert_close(loss, ref)
    for g, p in zip(got, model.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_inner_steps_stay_in_ball_and_box(norm):
    model = SmallCNN()
    nn.init.normal_(model.classifier[-1].weight, std=0.1)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    x[:, :, :5] = 0.0  # inputs on the box's edges
    x[:, :, -5:] = 1.0
    reg = YOPO(model, m=3, n=5, eps=0.3, alpha=0.2 if norm == "linf" else 2.0, norm=norm,
               first_layer=model.layer_one)  # fmt: skip
    reg(x, y).backward()
    d = reg.last.x_adv - x
    assert float(reg.ball.norm(d).max()) <= 0.3 + 1e-6
    assert float(reg.last.x_adv.min()) >= 0 and float(reg.last.x_adv.max()) <= 1
    assert float(reg.ball.norm(d).min()) > 0.1  # the adversary did move


LAYERS = {
    "conv+relu": lambda: nn.Sequential(nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.ReLU()),
    "conv-dilated": lambda: nn.Conv2d(2, 4, 3, stride=2, dilation=2, groups=2),
    "conv1d+leaky": lambda: nn.Sequential(nn.Conv1d(2, 4, 3, stride=2), nn.LeakyReLU(0.1)),
    "norm+conv": lambda: nn.Sequential(Normalize((0.5, 0.4), (0.2, 0.3)), nn.Conv2d(2, 4, 3, stride=3)),
    "linear+relu": lambda: nn.Sequential(nn.Linear(6, 5), nn.ReLU()),
    "conv-uneven": lambda: nn.Sequential(
        nn.Conv2d(2, 3, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2)), nn.LeakyReLU(0.2)
    ),
    "conv+relu+conv": lambda: nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.ReLU(), nn.Conv2d(3, 4, 2, stride=2), nn.ReLU()
    ),
    "generic (tanh)": lambda: nn.Sequential(nn.Conv2d(2, 4, 3), nn.Tanh()),
}


@pytest.mark.parametrize("name", LAYERS)
def test_fast_input_vjp_equals_autograd(name):
    torch.manual_seed(0)
    layer = LAYERS[name]().double()
    shape = {"conv1d+leaky": (3, 2, 11), "linear+relu": (3, 6)}.get(name, (3, 2, 9, 9))
    z = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    out = layer(z)
    p = torch.randn_like(out)
    (ref,) = torch.autograd.grad((out * p).sum(), z)
    f0 = FirstLayer(layer)
    assert f0.fast == (name != "generic (tanh)")
    torch.testing.assert_close(f0.input_vjp(z.detach(), p), ref)


@pytest.mark.parametrize("name", [n for n in LAYERS if n != "generic (tanh)"])
def test_fast_param_grad_equals_autograd(name):
    torch.manual_seed(0)
    layer = LAYERS[name]().double()
    shape = {"conv1d+leaky": (3, 2, 11), "linear+relu": (3, 6)}.get(name, (3, 2, 9, 9))
    z = torch.randn(shape, dtype=torch.float64)
    out = layer(z)
    p = torch.randn_like(out)
    names = [k for k, v in layer.named_parameters()]
    ref = dict(zip(names, torch.autograd.grad((out * p).sum(), list(layer.parameters())), strict=True))
    f0 = FirstLayer(layer)
    for q in (p, p.transpose(0, 1).contiguous().transpose(0, 1)):  # either memory layout of the co-state
        got = f0.param_grad(z, q)
        assert sorted(got) == sorted(names)
        for k in names:
            torch.testing.assert_close(got[k], ref[k], msg=k)
        torch.testing.assert_close(f0.input_vjp(z, q), torch.func.vjp(layer, z)[1](p)[0])
    # The pullback reuses its buffers between points: each result is right when it is returned.
    pullback = f0.pullback(p)
    for scale in (1.0, -0.5, 2.0):
        z_s = scale * z + 0.1
        torch.testing.assert_close(pullback(z_s), torch.func.vjp(layer, z_s)[1](p)[0])


def test_first_layer_is_found_by_tracing():
    torch.manual_seed(0)
    small = SmallCNN()
    assert find_first_layer(small, torch.rand(1, 1, 28, 28)) is small.layer_one[0]
    resnet = preact_resnet18()  # an nn.Identity comes first; it is skipped
    assert find_first_layer(resnet, torch.rand(1, 3, 32, 32)) is resnet.layer_one
    normalised = preact_resnet18(mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))
    with pytest.raises(ValueError, match="Normalize, which has no parameters"):
        find_first_layer(normalised, torch.rand(1, 3, 32, 32))


class Inline(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x):
        return self.conv(x * 2 - 1).flatten(1)


def test_unidentifiable_or_wrong_first_layer_raises_before_anything_changes():
    x, y = torch.rand(2, 1, 5, 5), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="could not identify the first layer"):
        YOPO(Inline())(x, y)
    model = SmallCNN()
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"must receive the model's input.*something other"):
        YOPO(model, first_layer=model.features)(torch.rand(2, 1, 28, 28), y)
    with pytest.raises(ValueError, match="never called"):
        YOPO(model, first_layer=model.features[:2])(torch.rand(2, 1, 28, 28), y)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k])


def test_bad_yopo_arguments():
    model = SmallCNN()
    with pytest.raises(ValueError, match="m must be an int >= 1"):
        YOPO(model, m=0)
    with pytest.raises(ValueError, match="objective must be one of"):
        YOPO(model, objective="kl")
    with pytest.raises(ValueError, match="first_layer_grad must be one of"):
        YOPO(model, first_layer_grad="both")
    with pytest.raises(ValueError, match='first_layer_grad must be "backprop"'):
        YOPO(model, objective="trades", first_layer_grad="hamiltonian")
    with pytest.raises(TypeError, match=r"first_layer must be a torch\.nn\.Module"):
        YOPO(model, first_layer="layer_one")
    reg = YOPO(model, m=2, n=1)
    reg.n = 4
    assert reg.steps == 4 and reg.n == 4


def test_bn_policy_governs_every_pass():
    class BNNet(Net):
        def __init__(self):
            super().__init__(relu=True)
            self.rest.insert(1, nn.BatchNorm2d(4))

    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 5, (6,))
    for bn, updates in [("train", 3), ("frozen", 0), ("eval", 0)]:
        model = BNNet().train()
        reg = YOPO(model, m=3, n=1, first_layer=model.layer_one, bn=bn)
        reg(x, y).backward()
        assert int(model.rest[1].num_batches_tracked) == updates, bn
        assert model.training


def test_chunked_inner_steps_give_the_same_adversary(monkeypatch):
    import robustreg.adversarial.yopo as yopo_module

    model = SmallCNN().double()
    nn.init.normal_(model.classifier[-1].weight, std=0.1)
    x, y = torch.rand(9, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (9,))
    results = []
    for chunk_bytes in (1 << 30, 1):  # one chunk; one sample per chunk
        monkeypatch.setattr(yopo_module, "CHUNK_BYTES", chunk_bytes)
        model.zero_grad()
        torch.manual_seed(0)
        reg = YOPO(model, m=2, n=3, eps=0.3, alpha=0.05, first_layer=model.layer_one)
        reg(x, y).backward()
        results.append((reg.last.x_adv, [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b)


def test_in_place_op_after_the_first_layer():
    # conv -> ReLU(inplace=True): the co-state must be taken at the conv's output, untouched.
    torch.manual_seed(0)
    plain = Net(relu=False).double()
    plain.rest.insert(0, nn.ReLU())
    inplace = copy.deepcopy(plain)
    inplace.rest[0] = nn.ReLU(inplace=True)
    x, y = torch.rand(4, 1, 8, 8, dtype=torch.float64), torch.randint(0, 5, (4,))
    expected, _ = slow_yopo(plain, x, y, m=2, n=2, eps=0.2, alpha=0.07, mode="hamiltonian")
    YOPO(inplace, m=2, n=2, eps=0.2, alpha=0.07, random_start=False, first_layer=inplace.layer_one)(x, y).backward()
    for k, p in inplace.named_parameters():
        torch.testing.assert_close(p.grad, expected[k], msg=k)


class ScaledConv(nn.Conv2d):
    def forward(self, x):
        return 2 * super().forward(x)


def test_subclasses_with_their_own_forward_use_the_generic_path():
    layer = nn.Sequential(ScaledConv(1, 2, 3), nn.ReLU()).double()
    f0 = FirstLayer(layer)
    assert not f0.fast
    z = torch.randn(2, 1, 6, 6, dtype=torch.float64, requires_grad=True)
    out = layer(z)
    p = torch.randn_like(out)
    (ref,) = torch.autograd.grad((out * p).sum(), z)
    torch.testing.assert_close(f0.input_vjp(z.detach(), p), ref)


def test_bf16_autocast_with_a_relu_first_layer():
    model = SmallCNN()
    nn.init.normal_(model.classifier[-1].weight, std=0.1)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    reg = YOPO(model, m=2, n=2, eps=0.3, alpha=0.1, first_layer=model.layer_one)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = reg(x, y)
    loss.backward()
    assert torch.isfinite(loss) and reg.last.x_adv.dtype == torch.float32
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert float((reg.last.x_adv - x).abs().max()) > 0.1


@pytest.mark.parametrize("objective", ["ce", "trades"])
@pytest.mark.parametrize("how", ["torch.compile", "module.compile"])
def test_yopo_under_torch_compile_equals_the_literal_algorithm(objective, how):
    """A compiled model never calls f0's forward hook: YOPO runs those passes eagerly, and its
    gradients are the uncompiled model's (the literal algorithm's for "ce")."""
    torch.manual_seed(0)
    model = Net(relu=True).double()
    eager = copy.deepcopy(model)
    x = torch.rand(6, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 5, (6,))
    if how == "torch.compile":
        compiled = torch.compile(model, backend="eager")  # the graph capture is what matters, not codegen
    else:
        model.compile(backend="eager")
        compiled = model
    kw = dict(m=2, n=3, eps=0.2, alpha=0.07, random_start=False, objective=objective)
    found = YOPO(compiled, m=1, n=1, eps=0.2, alpha=0.07)
    found(x, y)
    assert found.first_layer is model.layer_one[0]  # found by tracing the compiled model's module
    model.zero_grad()
    reg = YOPO(compiled, first_layer=model.layer_one, **kw)
    reg(x, y).backward()
    ref = YOPO(eager, first_layer=eager.layer_one, **kw)
    ref(x, y).backward()
    for (k, p), q in zip(model.named_parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=k)
    torch.testing.assert_close(reg.last.x_adv, ref.last.x_adv)
    if objective == "ce":
        expected, _ = slow_yopo(eager, x, y, m=2, n=3, eps=0.2, alpha=0.07, mode="hamiltonian")
        for k, q in eager.named_parameters():
            torch.testing.assert_close(q.grad, expected[k], msg=k)
