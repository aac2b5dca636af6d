"""robustreg.control: MSA, the spectral projection and the stable layers against independent
computations (projected gradient ascent, torch.optim.SGD, explicit convolution matrices)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustreg.control import (
    MSA,
    AntisymmetricLinear,
    ResidualODEBlock,
    conv_circular_norm,
    conv_operator_norm,
    hamiltonian_step,
    plot_eigenvalues,
    project_spectral,
)
from robustreg.models import SmallCNN

D = torch.float64


# ---------------------------------------------------------------------------------------------
# Independent reference computations


def clip_svd(w: torch.Tensor, r: float) -> torch.Tensor:
    """Singular values of ``w`` read as (out, -1) clipped at ``r``; reshaped back."""
    m = w.reshape(w.shape[0], -1)
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    return (u @ torch.diag(s.clamp(max=r)) @ vh).reshape(w.shape)


def sigma_max(w: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), ord=2))


def objective(theta, g, theta_k, alpha, beta):
    return float((theta * g).sum() - alpha * theta.pow(2).sum() - beta * (theta - theta_k).pow(2).sum())


def conv_matrix(weight: torch.Tensor, in_shape: tuple[int, ...], stride: int, padding: int) -> torch.Tensor:
    """The explicit matrix of ``x ↦ conv2d(x, weight)`` (no bias) on inputs of ``in_shape``."""
    n = 1
    for s in in_shape:
        n *= s
    basis = torch.eye(n, dtype=weight.dtype).reshape(n, *in_shape)
    cols = F.conv2d(basis, weight, None, stride=stride, padding=padding)  # row j = A e_j
    return cols.reshape(n, -1).t()


def conv_op_norm(conv: nn.Conv2d, in_shape: tuple[int, ...]) -> float:
    a = conv_matrix(conv.weight.detach(), in_shape, conv.stride[0], conv.padding[0])
    return float(torch.linalg.svdvals(a)[0])


def circular_op_norm(conv: nn.Conv2d, in_shape: tuple[int, ...]) -> float:
    """The explicit matrix of the circular convolution on the zero-padded grid (side H + 2p):
    each basis image wrapped around by F.pad(mode="circular") and convolved."""
    c, h, w = in_shape
    p, k = conv.padding[0], conv.kernel_size[0]
    n1, n2 = h + 2 * p, w + 2 * p
    basis = torch.eye(c * n1 * n2, dtype=conv.weight.dtype).reshape(-1, c, n1, n2)
    wrapped = F.pad(basis, (0, k - 1, 0, k - 1), mode="circular")
    out = F.conv2d(wrapped, conv.weight.detach())  # (n, Cout, n1, n2): stride 1, every position
    return float(torch.linalg.svdvals(out.reshape(out.shape[0], -1).t())[0])


class Net(nn.Module):
    """Conv (bias) → BatchNorm2d → ReLU → Linear (bias) on (B, 2, 5, 5)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 5 * 5, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


class TwoConv(nn.Module):
    """Two convolutions (stride 1 and stride 2) and a Linear on (B, 2, 5, 5)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 3, 3, padding=1)
        self.c2 = nn.Conv2d(3, 3, 3, stride=2, padding=1)
        self.fc = nn.Linear(3 * 3 * 3, 4)

    def forward(self, x):
        return self.fc(torch.tanh(self.c2(torch.tanh(self.c1(x)))).flatten(1))


def data(n: int = 8, classes: int = 4):
    return torch.randn(n, 2, 5, 5, dtype=D), torch.randint(0, classes, (n,))


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_state_close(a: nn.Module, b: nn.Module, atol: float = 1e-12) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:  # parameters and BN running statistics (and num_batches_tracked)
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=atol, msg=k)


def sgd_step(model: nn.Module, x, y, *, lr: float, weight_decay: float = 0.0) -> torch.Tensor:
    opt = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=weight_decay)
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return loss.detach()


# ---------------------------------------------------------------------------------------------
# 1. The closed-form Hamiltonian maximiser


@pytest.mark.parametrize("shape", [(5, 4), (3, 6)])
@pytest.mark.parametrize("alpha", [0.0, 0.3])
@pytest.mark.parametrize("beta", [0.5, 2.0])
def test_hamiltonian_step_is_the_constrained_maximiser(shape, alpha, beta):
    theta_k = 0.3 * torch.randn(*shape, dtype=D)
    g = 4.0 * torch.randn(*shape, dtype=D)
    unconstrained = (g + 2 * beta * theta_k) / (2 * (alpha + beta))
    assert sigma_max(unconstrained) > 1.2  # the constraint is active

    closed = hamiltonian_step(theta_k, g, alpha=alpha, beta=beta, radius=1.0)
    assert closed.shape == theta_k.shape
    assert sigma_max(closed) <= 1 + 1e-12

    # projected gradient ascent on f(θ) = ⟨θ,G⟩ − α‖θ‖² − β‖θ − θ_k‖² over ‖θ‖₂ ≤ 1
    step = 0.2 / (alpha + beta)
    theta = torch.zeros(shape, dtype=D)
    for _ in range(2000):
        grad = g - 2 * alpha * theta - 2 * beta * (theta - theta_k)
        theta = clip_svd(theta + step * grad, 1.0)
    torch.testing.assert_close(closed, theta, rtol=0, atol=1e-8)

    # no random feasible point (far or near the answer) does better
    best = objective(closed, g, theta_k, alpha, beta)
    scales = torch.rand(200, dtype=D) * 3
    for i in range(200):
        q = scales[i] * torch.randn(*shape, dtype=D) if i % 2 else closed + 0.05 * torch.randn(*shape, dtype=D)
        q = clip_svd(q, 1.0)
        assert objective(q, g, theta_k, alpha, beta) <= best + 1e-12


def test_hamiltonian_step_unconstrained_and_validation():
    theta_k, g = torch.randn(3, 4, dtype=D), torch.randn(3, 4, dtype=D)
    out = hamiltonian_step(theta_k, g, alpha=0.25, beta=0.75)  # radius None: no constraint
    # stationarity of the concave objective: G − 2αθ − 2β(θ − θ_k) = 0
    torch.testing.assert_close(g - 0.5 * out - 1.5 * (out - theta_k), torch.zeros_like(g), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="beta"):
        hamiltonian_step(theta_k, g, alpha=0.0, beta=0.0)
    with pytest.raises(ValueError, match="alpha"):
        hamiltonian_step(theta_k, g, alpha=-1.0, beta=1.0)
    with pytest.raises(ValueError, match="radius"):
        hamiltonian_step(theta_k, g, alpha=0.0, beta=1.0, radius=0.0)


# ---------------------------------------------------------------------------------------------
# 2.–3. Unconstrained MSA is SGD


@pytest.mark.parametrize("beta", [0.5, 2.0])
def test_unconstrained_msa_is_sgd(beta):
    model = Net().to(D).train()
    ref = copy.deepcopy(model)
    msa = MSA(model, beta=beta, constrain=None)
    for _ in range(3):
        x, y = data()
        loss = msa.step(x, y)
        ref_loss = sgd_step(ref, x, y, lr=1 / (2 * beta))
        torch.testing.assert_close(loss, ref_loss, rtol=0, atol=1e-12)
        assert_state_close(model, ref)
    assert not torch.equal(model.bn.running_mean, torch.zeros(3, dtype=D))  # BN stats did move
    assert int(model.bn.num_batches_tracked) == 3


@pytest.mark.parametrize(("alpha", "beta"), [(0.3, 0.5), (1.0, 2.0)])
def test_unconstrained_msa_with_alpha_is_sgd_with_weight_decay(alpha, beta):
    model = Net().to(D).train()
    ref = copy.deepcopy(model)
    msa = MSA(model, beta=beta, alpha=alpha, constrain=None)
    for _ in range(3):
        x, y = data()
        msa.step(x, y)
        sgd_step(ref, x, y, lr=1 / (2 * (alpha + beta)), weight_decay=2 * alpha)
        assert_state_close(model, ref)


def test_per_layer_overrides_are_sgd_parameter_groups():
    model = Net().to(D).train()
    ref = copy.deepcopy(model)
    msa = MSA(model, beta=1.0, constrain=None, layers={"fc": {"beta": 4.0, "alpha": 0.5}})
    fc = list(ref.fc.parameters())
    rest = [p for n, p in ref.named_parameters() if not n.startswith("fc.")]
    opt = torch.optim.SGD(
        [{"params": rest, "lr": 0.5}, {"params": fc, "lr": 1 / (2 * 4.5), "weight_decay": 1.0}], lr=0.5
    )
    for _ in range(2):
        x, y = data()
        msa.step(x, y)
        opt.zero_grad()
        F.cross_entropy(ref(x), y).backward()
        opt.step()
        assert_state_close(model, ref)


def test_constrained_layer_is_the_projected_sgd_step():
    """Constraining only ``fc``: fc.weight = P(SGD step), every other parameter = SGD step."""
    model = Net().to(D).train()
    with torch.no_grad():
        model.fc.weight.mul_(20)
    msa = MSA(model, beta=0.5, constrain=["fc"], radius=0.5)
    for _ in range(3):
        ref = copy.deepcopy(model)
        x, y = data()
        sgd_step(ref, x, y, lr=1.0)
        assert sigma_max(ref.fc.weight.detach()) > 0.5  # the projection does something
        with torch.no_grad():
            ref.fc.weight.copy_(clip_svd(ref.fc.weight, 0.5))
        msa.step(x, y)
        assert_state_close(model, ref, atol=1e-10)
        assert msa.last["projected"] == 1


# ---------------------------------------------------------------------------------------------
# 4. project_spectral


@pytest.mark.parametrize("shape", [(5, 4), (3, 7), (4, 2, 3, 3), (2, 3, 2, 2)])
@pytest.mark.parametrize("radius", [0.5, 1.0, 2.5])
def test_project_spectral(shape, radius):
    for _ in range(5):
        w = 3 * torch.randn(*shape, dtype=D)
        assert sigma_max(w) > radius
        p = project_spectral(w, radius)
        assert p.shape == w.shape and p.dtype == w.dtype
        s = torch.linalg.svdvals(p.reshape(shape[0], -1))
        assert float(s.max()) <= radius + 1e-12
        torch.testing.assert_close(p, clip_svd(w, radius), rtol=0, atol=1e-12)
        # Frobenius-nearest point of the ball
        dist = float((w - p).norm())
        for i in range(100):
            q = clip_svd(torch.rand(()) * 4 * torch.randn(*shape, dtype=D), radius)
            if i % 2:
                q = clip_svd(p + 0.05 * torch.randn(*shape, dtype=D), radius)
            assert dist <= float((w - q).norm()) + 1e-12

    inside = torch.randn(*shape, dtype=D)
    inside = inside * (0.9 * radius / sigma_max(inside))
    assert project_spectral(inside, radius) is inside
    with pytest.raises(ValueError, match="radius"):
        project_spectral(inside, 0.0)


# ---------------------------------------------------------------------------------------------
# 5. The constraint holds after MSA steps; report()


def test_msa_constrains_smallcnn_and_reports():
    model = SmallCNN().train()
    layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)}
    assert len(layers) == 7
    assert max(sigma_max(m.weight.detach()) for m in layers.values()) > 1.05  # not trivially feasible
    msa = MSA(model, beta=0.5, constrain="all")
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    for _ in range(3):
        msa.step(x, y)
        for name, m in layers.items():
            norm = torch.linalg.matrix_norm(m.weight.detach().reshape(m.weight.shape[0], -1), ord=2)
            assert float(norm) <= 1 + 1e-5, name
    report = {r.name: r for r in msa.report()}
    assert report.keys() == layers.keys()
    for name, m in layers.items():
        r, w = report[name], m.weight.detach()
        assert r.constrained is True and r.kind == type(m).__name__ and r.shape == tuple(w.shape)
        assert r.norm == pytest.approx(sigma_max(w.double()), rel=1e-5)
        assert r.operator_norm is None  # conv_norm="matrix"
        if w.reshape(w.shape[0], -1).shape[0] == w.reshape(w.shape[0], -1).shape[1]:
            assert r.radius == pytest.approx(float(torch.linalg.eigvals(w.double()).abs().max()), rel=1e-5)
        else:
            assert r.radius is None


def test_msa_on_a_network_with_its_logit_scale_equals_msa_on_the_scaled_loss():
    # the recipe keeps MSA's temperature in the model (SmallCNN(logit_scale=s)) instead of in the
    # loss (CE(s · logits)): the same function of the weights, so the same MSA steps
    torch.manual_seed(0)
    in_loss, in_model = SmallCNN(drop=0.0), SmallCNN(drop=0.0, logit_scale=10.0)
    in_model.load_state_dict(in_loss.state_dict())
    a = MSA(in_loss, beta=5.0, constrain="all", loss_fn=lambda logits, y: F.cross_entropy(10.0 * logits, y))
    b = MSA(in_model, beta=5.0, constrain="all")
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    for _ in range(3):
        torch.testing.assert_close(b.step(x, y), a.step(x, y), rtol=1e-6, atol=1e-6)
    for p, q in zip(in_loss.parameters(), in_model.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7)
    assert any(float(p.detach().abs().max()) > 0 for p in in_loss.classifier[-1].parameters())  # it moved


def test_report_marks_unconstrained_layers():
    model = Net().to(D)
    msa = MSA(model, beta=1.0, constrain=[model.conv])
    rep = {r.name: r.constrained for r in msa.report()}
    assert rep == {"conv": True, "fc": False}


# ---------------------------------------------------------------------------------------------
# 6. Convolution operator norms


@pytest.mark.parametrize("stride", [1, 2])
def test_conv_operator_norm_is_the_top_singular_value(stride):
    conv = nn.Conv2d(2, 3, 3, stride=stride, padding=1).to(D)
    sigma, v = conv_operator_norm(conv, (2, 5, 5), iters=1000, tol=1e-12)
    exact = conv_op_norm(conv, (2, 5, 5))
    assert sigma == pytest.approx(exact, rel=1e-5)
    assert v.shape == (2, 5, 5)
    assert float(v.norm()) == pytest.approx(1.0, rel=1e-9)
    # the bias plays no part
    with torch.no_grad():
        conv.bias.fill_(10.0)
    assert conv_operator_norm(conv, (2, 5, 5), iters=1000, tol=1e-12)[0] == pytest.approx(exact, rel=1e-5)
    # a replacement weight is used instead of the module's
    w2 = 2 * conv.weight.detach()
    assert conv_operator_norm(conv, (2, 5, 5), weight=w2, iters=1000, tol=1e-12)[0] == pytest.approx(
        2 * exact, rel=1e-5
    )


@pytest.mark.parametrize("stride", [1, 2])
def test_conv_operator_norm_with_defaults(stride):
    conv = nn.Conv2d(2, 3, 3, stride=stride, padding=1).to(D)
    assert conv_operator_norm(conv, (2, 5, 5))[0] == pytest.approx(conv_op_norm(conv, (2, 5, 5)), rel=1e-5)


def test_msa_operator_norm_constraint():
    model = TwoConv().to(D).train()
    with torch.no_grad():
        model.c1.weight.mul_(6)
        model.c2.weight.mul_(6)
    convs = {"c1": model.c1, "c2": model.c2}
    assert all(conv_op_norm(c, s) > 1.5 for c, s in zip(convs.values(), [(2, 5, 5), (3, 5, 5)], strict=True))
    radius, beta = 1.0, 0.5
    msa = MSA(model, beta=beta, conv_norm="operator", radius=radius)
    shapes = {"c1": (2, 5, 5), "c2": (3, 5, 5)}
    for _ in range(4):
        x, y = data()
        # the expected update: the SGD step, then each convolution scaled down to operator norm r
        ref = copy.deepcopy(model)
        sgd_step(ref, x, y, lr=1 / (2 * beta))
        expected = {}
        for name, shape in shapes.items():  # scaled by r / (the circular upper bound)
            w = getattr(ref, name).weight.detach()
            s = circular_op_norm(getattr(ref, name), shape)
            expected[name] = w * min(1.0, radius / s)
        msa.step(x, y)
        for name, shape in shapes.items():
            conv = convs[name]
            assert conv_op_norm(conv, shape) <= radius * (1 + 1e-5), name
            torch.testing.assert_close(conv.weight.detach(), expected[name], rtol=1e-5, atol=1e-9)
        assert sigma_max(model.fc.weight.detach()) <= radius + 1e-12  # Linear: matrix projection
    report = {r.name: r for r in msa.report()}
    for name, shape in shapes.items():
        assert report[name].operator_norm == pytest.approx(conv_op_norm(convs[name], shape), rel=1e-4)
    assert report["fc"].operator_norm is None


@pytest.mark.parametrize("stride", [1, 2])
def test_conv_circular_norm_bounds_the_operator_norm(stride):
    torch.manual_seed(stride)
    conv = nn.Conv2d(2, 3, 3, stride=stride, padding=1).to(D)
    bound = conv_circular_norm(conv, (2, 5, 5))
    assert bound == pytest.approx(circular_op_norm(conv, (2, 5, 5)), rel=1e-9)  # exact for the circular one
    assert bound >= conv_op_norm(conv, (2, 5, 5)) * (1 - 1e-12)  # an upper bound of the zero-padded one
    plain = nn.Conv2d(2, 3, 1).to(D)  # a 1×1 kernel applies one matrix at every pixel
    assert conv_circular_norm(plain, (2, 4, 4)) == pytest.approx(sigma_max(plain.weight.detach()[:, :, 0, 0]), rel=1e-9)


def test_conv_circular_norm_of_a_grouped_convolution():
    conv = nn.Conv2d(4, 4, 3, padding=1, groups=2).to(D)
    dense = nn.Conv2d(4, 4, 3, padding=1).to(D)
    with torch.no_grad():
        dense.weight.zero_()
        dense.weight[:2, :2] = conv.weight[:2]
        dense.weight[2:, 2:] = conv.weight[2:]
    assert conv_circular_norm(conv, (4, 5, 5)) == pytest.approx(circular_op_norm(dense, (4, 5, 5)), rel=1e-9)


def test_operator_warm_start_follows_the_input_size():
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4)).to(D)
    msa = MSA(net, beta=1.0, conv_norm="operator")
    for side in (6, 8):
        msa.step(torch.randn(4, 2, side, side, dtype=D), torch.tensor([0, 1, 2, 3]))
        report = {r.name: r for r in msa.report()}
        exact = conv_op_norm(net[0], (2, side, side))
        assert exact * (1 - 1e-3) <= report["0"].operator_norm <= exact * (1 + 1e-9)  # from below


def test_parameters_the_forward_does_not_use_are_left_alone():
    class Partial(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.unused = nn.Linear(4, 3), nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x)

    model = Partial().to(D)
    ref = copy.deepcopy(model)
    x, y = torch.randn(5, 4, dtype=D), torch.tensor([0, 1, 2, 0, 1])
    MSA(model, beta=2.0, constrain=None).step(x, y)
    sgd_step(ref, x, y, lr=1 / 4)  # SGD skips parameters without a gradient
    assert_state_close(model, ref)


def test_msa_operator_norm_constraint_with_close_singular_values():
    """A 1×1 convolution is the matrix W applied at every pixel: its operator norm is ‖W‖₂, and
    singular values 1.5 and 1.5·0.995 make the power iteration converge slowly."""
    conv = nn.Conv2d(2, 2, 1, bias=False).to(D)
    with torch.no_grad():
        conv.weight.copy_(torch.diag(torch.tensor([1.5, 1.5 * 0.995], dtype=D)).reshape(2, 2, 1, 1))
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).to(D)
    msa = MSA(model, beta=1e6, constrain=[conv], conv_norm="operator", radius=1.0)
    msa.step(torch.randn(4, 2, 4, 4, dtype=D), torch.tensor([0, 1, 2, 0]))
    assert sigma_max(conv.weight.detach()) <= 1 + 1e-5


# ---------------------------------------------------------------------------------------------
# 7. Stable parametrisations


@pytest.mark.parametrize("gamma", [0.0, 0.01, 0.7])
def test_antisymmetric_linear_eigenvalues(gamma):
    layer = AntisymmetricLinear(7, gamma=gamma).to(D)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(7, 7, dtype=D))
    ev = torch.linalg.eigvals(layer.matrix())
    torch.testing.assert_close(ev.real, torch.full((7,), -gamma, dtype=D), rtol=0, atol=1e-10)
    x = torch.randn(5, 7, dtype=D)
    w = layer.weight.detach()
    torch.testing.assert_close(layer(x), x @ (w - w.t() - gamma * torch.eye(7, dtype=D)).t() + layer.bias)


def test_residual_ode_block_forward():
    block = ResidualODEBlock(6, h=0.3, gamma=0.2).to(D)
    with torch.no_grad():
        block.linear.bias.copy_(torch.randn(6, dtype=D))
    x = torch.randn(4, 6, dtype=D)
    w, b = block.linear.weight.detach(), block.linear.bias.detach()
    a = w - w.t() - 0.2 * torch.eye(6, dtype=D)
    expected = x + 0.3 * torch.tanh(x @ a.t() + b)
    torch.testing.assert_close(block(x), expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="h"):
        ResidualODEBlock(6, h=0.0)


# ---------------------------------------------------------------------------------------------
# 8. Contract and validation


@pytest.mark.parametrize("train", [True, False])
def test_step_leaves_grads_modes_and_flags_alone(train):
    model = Net().to(D).train(train)
    model.bn.weight.requires_grad_(False)  # frozen: must stay as it is
    grads = {"conv.weight": torch.randn(3, 2, 3, 3, dtype=D), "fc.bias": torch.randn(4, dtype=D)}
    for name, p in model.named_parameters():
        p.grad = grads[name].clone() if name in grads else None
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    before = state(model)
    msa = MSA(model, beta=1.0)
    x, y = data()
    msa.step(x, y)
    for name, p in model.named_parameters():
        if name in grads:
            assert p.grad is not None and torch.equal(p.grad, grads[name]), name
        else:
            assert p.grad is None, name
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert {n: m.training for n, m in model.named_modules()} == modes
    after = model.state_dict()
    assert torch.equal(after["bn.weight"], before["bn.weight"])  # frozen parameter untouched
    assert not torch.equal(after["conv.weight"], before["conv.weight"])  # the step did update
    stats_moved = not torch.equal(after["bn.running_mean"], before["bn.running_mean"])
    assert stats_moved == train  # BN statistics update only in a training forward


def bad_constructors(model: Net):
    return [
        (dict(beta=0), ValueError, "beta"),
        (dict(beta=-1), ValueError, "beta"),
        (dict(beta=1, alpha=-0.1), ValueError, "alpha"),
        (dict(beta=1, radius=0), ValueError, "radius"),
        (dict(beta=1, conv_norm="fro"), ValueError, "conv_norm"),
        (dict(beta=1, constrain=[model.bn]), TypeError, "'bn'"),
        (dict(beta=1, constrain=["no_such_layer"]), ValueError, "no_such_layer"),
        (dict(beta=1, constrain=[nn.Linear(2, 2)]), ValueError, "not a module of the model"),
        (dict(beta=1, constrain="fc"), TypeError, "constrain"),
        (dict(beta=1, layers={"fc": {"lr": 1}}), ValueError, "lr"),
        (dict(beta=1, layers={"bn": {"constrain": True}}), TypeError, "'bn'"),
        (dict(beta=1, layers={"fc": {"beta": 0}}), ValueError, "beta"),
        (dict(beta=True), TypeError, "beta"),
    ]


@pytest.mark.parametrize("case", range(13))
def test_bad_constructor_arguments(case):
    model = Net().to(D)
    kwargs, exc, match = bad_constructors(model)[case]
    before = state(model)
    training = model.training
    with pytest.raises(exc, match=match):
        MSA(model, **kwargs)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training == training


def test_bad_step_inputs_change_nothing():
    model = Net().to(D).train()
    msa = MSA(model, beta=1.0)
    x, y = data()
    before = state(model)
    with pytest.raises(ValueError, match="y"):
        msa.step(x, y[:-1])
    with pytest.raises(TypeError, match="y"):
        msa.step(x, y.to(D))
    with pytest.raises(ValueError, match="x"):
        msa.step(x[:0], y[:0])
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("constrain", ["all", None])
def test_non_finite_integer_and_out_of_range_inputs_change_nothing(constrain):
    model = Net().to(D).train()
    msa = MSA(model, beta=1.0, constrain=constrain)
    x, y = data()
    nan, inf = x.clone(), x.clone()
    nan[3, 0, 1, 1], inf[0, 1, 0, 0] = float("nan"), -float("inf")
    params = dict(model.named_parameters())
    before = state(model)
    for xb, yb, exc, match in [
        (nan, y, ValueError, "x contains NaN or inf"),
        (inf, y, ValueError, "x contains NaN or inf"),
        (x.to(torch.int64), y, TypeError, "x must be a floating-point tensor"),
        (x, torch.full_like(y, 4), ValueError, r"y holds class 4, outside the model's classes 0\.\.3"),
        (x, -y - 1, ValueError, "y holds negative class indices"),
    ]:
        with pytest.raises(exc, match=match):
            msa.step(xb, yb)
        after = model.state_dict()  # weights and BatchNorm running statistics
        assert all(torch.equal(before[k], after[k]) for k in before)
        assert model.training and all(p is params[n] for n, p in model.named_parameters())
    msa.step(x, y)  # and a good batch still steps, with finite parameters
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_a_model_without_logits_is_named_before_the_step():
    model = nn.Sequential(nn.Flatten(), nn.Linear(50, 1), nn.Flatten(0)).to(D)
    before = state(model)
    with pytest.raises(ValueError, match=r"model must return .*logits of shape \(B, num_classes\)"):
        MSA(model, beta=1.0).step(*data())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ---------------------------------------------------------------------------------------------
# 9. plot_eigenvalues


def test_plot_eigenvalues(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    path = tmp_path / "sub" / "eig.png"
    fig = plot_eigenvalues({"linear": nn.Linear(6, 6), "antisym": AntisymmetricLinear(6)}, path, title="t")
    plt.close(fig)
    png = path.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    with pytest.raises(ValueError, match="square"):
        plot_eigenvalues({"wide": nn.Linear(4, 6)}, tmp_path / "bad.png")
    plt.close("all")
