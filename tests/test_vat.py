"""VAT and EntMin against explicit Hessians and written-out formulas, and the loss-object contract."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustreg import VAT, EntMin
from robustreg.func import per_sample_dot

from ._reference import kl, kl_hessians
from .conftest import AliasedModel, assert_aliases_stay_trainable

D = torch.float64


def tiny(bn: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)]
    if bn:
        layers.insert(1, nn.BatchNorm1d(6))
    return nn.Sequential(*layers).to(D)


def test_hvp_direction_is_the_top_eigenvector_of_the_explicit_kl_hessian():
    model = tiny()
    x = torch.randn(5, 4, dtype=D)
    top = torch.stack([torch.linalg.eigh(h).eigenvectors[:, -1] for h in kl_hessians(model, x)])
    torch.manual_seed(1)
    reg = VAT(model, eps=0.5, n_power=200, method="hvp")
    reg(x)
    d = reg.last.r_adv / 0.5
    assert torch.allclose(per_sample_dot(d, top).abs(), torch.ones(5, dtype=D), atol=1e-6)


def test_finite_difference_agrees_with_hvp_for_small_xi():
    model = tiny()
    x = torch.randn(6, 4, dtype=D)
    dirs = {}
    for method in ("finite_difference", "hvp"):
        torch.manual_seed(3)  # the same random start
        reg = VAT(model, eps=1.0, xi=1e-6, n_power=2, method=method)
        reg(x)
        dirs[method] = reg.last.r_adv
    cos = per_sample_dot(dirs["finite_difference"], dirs["hvp"])
    assert torch.allclose(cos, torch.ones(6, dtype=D), atol=1e-6)


def test_loss_is_the_kl_at_the_returned_perturbation_and_its_gradient_flows_to_the_weights():
    model = tiny()
    x = torch.randn(7, 4, dtype=D)
    reg = VAT(model, eps=0.3)
    loss = reg(x)
    r = reg.last.r_adv
    torch.testing.assert_close(r.norm(dim=1), torch.full((7,), 0.3, dtype=D))
    with torch.no_grad():
        expected = kl(model(x), model(x + r)).mean()
    torch.testing.assert_close(loss.detach(), expected)
    # p(y|x) is constant: the gradient is that of KL(p_fixed ‖ p(x + r)) only
    clean = model(x).detach()
    (ref,) = torch.autograd.grad(kl(clean, model(x + r)).mean(), [model[0].weight])
    (got,) = torch.autograd.grad(loss, [model[0].weight])
    torch.testing.assert_close(got, ref)
    # given logits are used for p(y|x)
    logits = model(x)
    torch.manual_seed(5)
    a = reg(x, logits=logits)
    torch.manual_seed(5)
    b = reg(x)
    torch.testing.assert_close(a, b)


def test_zero_power_iterations_use_the_random_direction():
    model = tiny()
    x = torch.randn(3, 4, dtype=D)
    torch.manual_seed(9)
    expected = torch.randn_like(x)
    expected = 0.2 * expected / expected.norm(dim=1, keepdim=True)
    torch.manual_seed(9)
    reg = VAT(model, eps=0.2, n_power=0)
    reg(x)
    torch.testing.assert_close(reg.last.r_adv, expected)


@pytest.mark.parametrize("method", ["finite_difference", "hvp"])
def test_no_side_effects_and_frozen_batchnorm(method):
    model = tiny(bn=True).train()
    model[0].weight.grad = torch.ones_like(model[0].weight)
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    x = torch.randn(8, 4, dtype=D)
    VAT(model, eps=0.5, method=method)(x).backward()
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():  # parameters unchanged, running stats not moved
        torch.testing.assert_close(v, stats[k], rtol=0, atol=0, msg=k)
    assert {k: p.requires_grad for k, p in model.named_parameters()} == flags
    assert not torch.equal(model[0].weight.grad, torch.ones_like(model[0].weight))  # the user's backward accumulated


def test_power_step_runs_in_float32_under_autocast():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    x = torch.randn(6, 4)
    torch.manual_seed(2)
    plain = VAT(model, eps=1.0, xi=1e-6)
    plain(x)
    torch.manual_seed(2)
    amp = VAT(model, eps=1.0, xi=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp(x)
    assert amp.last.r_adv.dtype == torch.float32
    # a sample whose float32 KL gradient underflows to zero keeps its random direction
    torch.testing.assert_close(amp.last.r_adv.norm(dim=1), torch.ones(6))
    # bf16 has 8 bits of mantissa: x + 1e-6·d would round to x and give a zero gradient there
    assert float(per_sample_dot(plain.last.r_adv, amp.last.r_adv).min()) > 0.99


def test_bad_arguments_name_themselves():
    model = tiny()
    x = torch.randn(2, 4, dtype=D)
    for kwargs, match in [
        ({"eps": 0}, "eps"),
        ({"eps": 1.0, "xi": -1e-6}, "xi"),
        ({"eps": 1.0, "n_power": -1}, "n_power"),
        ({"eps": 1.0, "method": "exact"}, "method"),
        ({"eps": 1.0, "bn": "none"}, "bn"),
        ({"eps": 1.0, "method": "hvp", "bn": "train"}, "bn"),
    ]:
        with pytest.raises(ValueError, match=match):
            VAT(model, **kwargs)
    reg = VAT(model, eps=1.0)
    with pytest.raises(ValueError, match="logits"):
        reg(x, logits=torch.zeros(3, 3, dtype=D))
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        reg(torch.zeros(2, 4, dtype=torch.long))
    reg.eps = -1.0  # hyper-parameters are checked again at every call
    with pytest.raises(ValueError, match="eps"):
        reg(x)


def test_entmin_is_the_mean_prediction_entropy():
    model = tiny()
    x = torch.randn(5, 4, dtype=D)
    p = torch.softmax(model(x), 1)
    expected = -(p * p.log()).sum(1).mean()
    torch.testing.assert_close(EntMin(model)(x), expected)
    logits = model(x)
    torch.testing.assert_close(EntMin(model)(logits=logits), expected)
    uniform = torch.zeros(4, 3, dtype=D)
    torch.testing.assert_close(EntMin(model)(logits=uniform), torch.log(torch.tensor(3.0, dtype=D)))
    with pytest.raises(ValueError, match="logits"):
        EntMin(model)(logits=torch.zeros(3, dtype=D))


def test_entmin_gradient_is_the_written_out_entropys():
    torch.manual_seed(0)
    logits = torch.randn(6, 4, dtype=D, requires_grad=True)
    (grad,) = torch.autograd.grad(EntMin(tiny())(logits=logits), logits)
    p = torch.softmax(logits.detach(), 1)
    h = -(p * p.log()).sum(1, keepdim=True)
    torch.testing.assert_close(grad, -p * (p.log() + h) / 6)  # ∂H/∂z_j = −p_j (log p_j + H), batch mean
    assert torch.autograd.gradcheck(lambda z: EntMin(tiny())(logits=z), (logits,))
    model = tiny()  # through the model's weights: the same as autograd of the written-out entropy
    x = torch.randn(5, 4, dtype=D)
    ours = torch.autograd.grad(EntMin(model)(x), list(model.parameters()))
    q = F.softmax(model(x), 1)
    written = torch.autograd.grad(-(q * torch.log(q)).sum(1).mean(), list(model.parameters()))
    for a, b in zip(ours, written, strict=True):
        torch.testing.assert_close(a, b)


def test_hvp_keeps_aliased_submodules_trainable():
    assert_aliases_stay_trainable(
        AliasedModel().to(D), lambda model: VAT(model, eps=0.5, method="hvp")(torch.randn(5, 4, dtype=D))
    )


def _bn_model():
    return tiny(bn=True).train()


@pytest.mark.parametrize("method", ["finite_difference", "hvp"])
def test_bad_inputs_raise_the_shared_errors_before_anything_changes(method):
    from .test_engines import assert_same, snapshot

    model = _bn_model()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    reg = VAT(model, eps=0.5, method=method, bn="eval" if method == "hvp" else "train")
    x = torch.randn(4, 4, dtype=D)
    nan, inf = x.clone(), x.clone()
    nan[1, 2], inf[0, 0] = float("nan"), float("inf")
    snap = snapshot(model)
    cases = [
        ((nan,), {}, ValueError, "x contains NaN or inf"),
        ((inf,), {}, ValueError, "x contains NaN or inf"),
        ((x[:0],), {}, ValueError, "empty batch"),
        ((x.long(),), {}, TypeError, "x must be a floating-point tensor"),
        ((x,), {"logits": [[0.0, 1.0, 2.0]] * 4}, TypeError, "logits must be a torch.Tensor"),
        ((x,), {"logits": torch.zeros(4, 5, dtype=D)}, ValueError, r"logits must have shape \(4, 3\)"),
    ]
    for args, kwargs, exc, match in cases:
        with pytest.raises(exc, match=match):
            reg(*args, **kwargs)
        assert_same(model, snap)
        assert reg.last is None


def test_vat_and_entmin_take_no_labels():
    from .test_engines import assert_same, snapshot

    model = _bn_model()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    x, y = torch.randn(4, 4, dtype=D), torch.tensor([0, 1, 2, 0])
    logits = torch.randn(4, 3, dtype=D)
    snap = snapshot(model)
    vat, ent = VAT(model, eps=0.5), EntMin(model)
    for call, owner in [
        (lambda: vat(x, y), "VAT"),
        (lambda: vat(x, logits), "VAT"),  # logits are keyword-only: named in the message
        (lambda: ent(x, y), "EntMin"),
        (lambda: ent(x, y, logits=logits), "EntMin"),
    ]:
        with pytest.raises(TypeError, match=rf"^{owner} takes no labels") as err:
            call()
        assert "logits=" in str(err.value) and "F.cross_entropy(model(x_l), y_l) + reg(x_u)" in str(err.value)
        assert_same(model, snap)
    assert vat.last is None and vat._num_classes is None and ent._num_classes is None
    vat(x, logits=logits)  # by keyword they are accepted
    assert vat.last is not None


@pytest.mark.parametrize("where", ["logits", "model"])
def test_a_non_finite_model_output_shows_in_the_loss(where):
    model = tiny()
    x = torch.randn(4, 4, dtype=D)
    logits = None
    if where == "model":
        with torch.no_grad():
            model[2].bias[1] = float("nan")  # the model overflowed in training, say
    else:
        logits = model(x).detach()
        logits[2, 0] = float("inf")
    loss = VAT(model, eps=0.5)(x, logits=logits)
    assert not bool(torch.isfinite(loss))  # not hidden: the training loop sees it
    assert not bool(torch.isfinite(EntMin(model)(x, logits=logits) if logits is not None else EntMin(model)(x)))


def test_a_model_without_logits_is_named():
    reg = VAT(nn.Sequential(nn.Linear(4, 1), nn.Flatten(0)).to(D), eps=0.5)
    with pytest.raises(ValueError, match=r"model must return .*logits of shape \(B, num_classes\)"):
        reg(torch.randn(3, 4, dtype=D))


def test_hvp_reraises_a_genuine_error_in_the_model():
    class Flaky(nn.Module):  # fails on its second forward (the first exact product), as a bug would
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.calls = nn.Linear(4, 3).to(D), 0

        def forward(self, x):
            self.calls += 1
            if self.calls == 3:
                raise RuntimeError("bug in the user's model")
            return self.fc(x)

    reg = VAT(Flaky(), eps=0.5, method="hvp")
    with pytest.raises(RuntimeError, match="bug in the user's model"):
        reg(torch.randn(3, 4, dtype=D))
