"""The shared validation dialect (robustreg/_checks.py): the dtype rule and the label-free call."""

import pytest
import torch
from torch import nn

import robustreg
from robustreg import _checks

from .conftest import TinyConvBN, assert_same, snapshot

F64, F32, BF16, F16 = torch.float64, torch.float32, torch.bfloat16, torch.float16


def _torch_accepts(model: nn.Module, x: torch.Tensor, autocast: bool) -> bool:
    """Whether torch itself runs ``model(x)`` (the ground truth the rule must not be stricter than)."""
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=BF16, enabled=autocast):
            model(x)
    except RuntimeError:
        return False
    return True


@pytest.mark.parametrize(
    ("model_dtype", "x_dtype", "autocast", "refused"),
    [
        (F64, F32, False, True),  # the reported case
        (F32, F64, False, True),
        (F32, BF16, False, True),
        (BF16, F32, False, True),
        (F64, F32, True, True),  # autocast never casts float64
        (F32, F64, True, True),
        (F32, BF16, True, False),  # autocast casts both to bfloat16
        (BF16, F32, True, False),
        (F32, F32, False, False),
        (F64, F64, True, False),
    ],
)
def test_dtype_rule_refuses_what_torch_refuses(model_dtype, x_dtype, autocast, refused):
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).to(model_dtype)
    x = torch.rand(2, 4, dtype=x_dtype)
    assert _torch_accepts(model, x, autocast) is not refused  # the table is torch's behaviour
    with torch.autocast("cpu", dtype=BF16, enabled=autocast):
        if refused:
            with pytest.raises(TypeError) as err:
                _checks.check_dtype(model, x)
            msg = str(err.value)
            assert msg.startswith(f"x has dtype {x_dtype} but the model's parameters are {model_dtype}")
            assert f"model.to({x_dtype})" in msg and f"x.to({model_dtype})" in msg
        else:
            _checks.check_dtype(model, x)


def test_models_without_one_parameter_dtype_are_left_to_torch():
    x = torch.rand(2, 4)
    _checks.check_dtype(nn.Softmax(dim=1), x.double())  # no parameters
    mixed = nn.Sequential(nn.Linear(4, 4).to(BF16), nn.LayerNorm(4))  # bf16 weights, float32 norm
    _checks.check_dtype(mixed, x)
    buffers_only = nn.BatchNorm1d(4, affine=False).double()  # buffers are not parameters
    _checks.check_dtype(buffers_only, x)
    integer = nn.Linear(4, 3)
    integer.register_parameter("steps", nn.Parameter(torch.zeros(1, dtype=torch.long), requires_grad=False))
    with pytest.raises(TypeError, match="float64"):  # non-floating parameters do not count
        _checks.check_dtype(integer, x.double())


def test_classes_of_checks_the_dtype_also_when_the_class_count_is_cached():
    model = nn.Linear(4, 3).double()
    assert _checks.classes_of(model, torch.rand(2, 4, dtype=F64)) == 3
    with pytest.raises(TypeError, match=r"x has dtype torch\.float32"):
        _checks.classes_of(model, torch.rand(2, 4), cached=3)


NAMES = ("PGDAT", "FastAT", "FreeAT", "TRADES", "YOPO", "ATTA", "Amata", "VAT", "TNAR", "EntMin", "MSA", "PGD", "CW")


def _call(name: str, model: nn.Module, x: torch.Tensor) -> object:
    """One call of the public object ``name`` that runs ``model`` on the images ``x`` (B, 1, 8, 8)."""
    y = torch.zeros(x.shape[0], dtype=torch.long)
    if name == "TNAR":  # a linear chart of the flattened images, in the model's dtype (float64)
        chart = robustreg.charts.LinearChart(torch.randn(64, 2, dtype=F64), torch.zeros(64, dtype=F64))
        net = nn.Sequential(nn.Unflatten(1, (1, 8, 8)), model)
        return robustreg.TNAR(net, chart, eps_tangent=0.1, eps_normal=0.1)(x.flatten(1))
    calls = {
        "PGDAT": lambda: robustreg.PGDAT(model, eps=0.1, steps=1)(x, y),
        "FastAT": lambda: robustreg.FastAT(model, eps=0.1)(x, y),
        "FreeAT": lambda: robustreg.FreeAT(model, eps=0.1)(x, y),
        "TRADES": lambda: robustreg.TRADES(model, eps=0.1, steps=1)(x, y),
        "YOPO": lambda: robustreg.YOPO(model, m=1, n=1, eps=0.1)(x, y),
        "ATTA": lambda: robustreg.ATTA(model, 4, eps=0.1)(x, y, torch.arange(4)),
        "Amata": lambda: robustreg.Amata(robustreg.PGDAT(model, eps=0.1), k_min=1, k_max=2, tau=0.1)(x, y),
        "VAT": lambda: robustreg.VAT(model, eps=0.5)(x),
        "EntMin": lambda: robustreg.EntMin(model)(x),
        "MSA": lambda: robustreg.control.MSA(model, beta=1.0).step(x, y),
        "PGD": lambda: robustreg.PGD(eps=0.1, steps=1)(model, x, y),
        "CW": lambda: robustreg.CW(0.1, steps=1)(model, x, y),
    }
    return calls[name]()


@pytest.mark.parametrize("name", NAMES)
def test_every_object_refuses_a_float64_model_with_float32_x_and_changes_nothing(name):
    model = TinyConvBN().double().train()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    snap = snapshot(model)
    with pytest.raises(TypeError, match=r"x has dtype torch\.float32 but the model's parameters are torch\.float64"):
        _call(name, model, torch.rand(4, 1, 8, 8))
    assert_same(model, snap)
    _call(name, model, torch.rand(4, 1, 8, 8, dtype=F64))  # the same call with x converted runs


def test_a_cached_class_count_does_not_skip_the_dtype_check():
    model = TinyConvBN().double()
    reg = robustreg.PGDAT(model, eps=0.1, steps=1)
    y = torch.zeros(2, dtype=torch.long)
    reg(torch.rand(2, 1, 8, 8, dtype=F64), y)  # caches the class count
    last = reg.last
    with pytest.raises(TypeError, match=r"x has dtype torch\.float32"):
        reg(torch.rand(2, 1, 8, 8), y)
    assert reg.last is last


def test_autocast_users_are_not_refused():
    model = TinyConvBN().to(BF16).train()
    x, y = torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    with torch.autocast("cpu", dtype=BF16):
        loss = robustreg.PGDAT(model, eps=0.1, steps=1)(x, y)
    assert torch.isfinite(loss)
    with pytest.raises(TypeError, match="bfloat16"):  # the same mix without autocast fails in torch
        robustreg.PGDAT(model, eps=0.1, steps=1)(x, y)


def test_no_labels_names_the_object_and_the_fix():
    _checks.no_labels("VAT", ())
    with pytest.raises(TypeError) as err:
        _checks.no_labels("VAT", (torch.zeros(2),))
    msg = str(err.value)
    assert msg.startswith("VAT takes no labels")
    assert "logits=" in msg and "F.cross_entropy(model(x_l), y_l) + reg(x_u)" in msg


def test_evaluation_and_fosc_name_a_dtype_mismatch_and_restore_the_mode():
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double().train()
    x, y = torch.rand(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    attack = robustreg.PGD(eps=0.1, steps=2, bounds=None)
    with pytest.raises(TypeError, match=r"x has dtype torch\.float32 but the model's parameters are torch\.float64"):
        robustreg.robust_accuracy(model, (x, y), attack=attack)
    with pytest.raises(TypeError, match=r"x_adv has dtype torch\.float32"):
        robustreg.fosc(model, x, x + 0.01, y, eps=0.1)
    assert model.training
    assert robustreg.robust_accuracy(model, (x.double(), y), attack=attack).clean >= 0  # the fix works
