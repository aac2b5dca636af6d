"""The one contract of docs/contract.md, checked on every public object of the three families
(adversarial engines with Amata, semi-supervised regularisers, control.MSA) with one
parametrised test per clause. Each family's own tests check the rest in depth."""

import math

import pytest
import torch

import robustreg
from robustreg.charts import LinearChart
from robustreg.control import MSA
from robustreg.models import MLP
from robustreg.record import Record

from .conftest import assert_same, snapshot

D, C = 6, 3  # features, classes

ADV = dict(eps=0.1, alpha=0.05, bounds=(0.0, 1.0))
OBJECTS = {  # name -> (model -> object, how it is called: "xy", "xyi" (with index), "x", "step")
    "pgdat": (lambda m: robustreg.PGDAT(m, steps=2, **ADV), "xy"),
    "fast": (lambda m: robustreg.FastAT(m, eps=0.1), "xy"),
    "free": (lambda m: robustreg.FreeAT(m, eps=0.1), "xy"),
    "trades": (lambda m: robustreg.TRADES(m, steps=2, **ADV), "xy"),
    "yopo": (lambda m: robustreg.YOPO(m, m=2, n=2, **ADV), "xy"),
    "atta": (lambda m: robustreg.ATTA(m, 16, steps=2, **ADV), "xyi"),
    "amata": (lambda m: robustreg.Amata(robustreg.PGDAT(m, **ADV), k_min=1, k_max=3, tau=0.1, total=2), "xy"),
    "vat": (lambda m: robustreg.VAT(m, eps=0.5), "x"),
    "tnar": (lambda m: robustreg.TNAR(m, chart(m), eps_tangent=0.5, eps_normal=0.1), "x"),
    "entmin": (lambda m: robustreg.EntMin(m), "x"),
    "msa": (lambda m: MSA(m, beta=5.0), "step"),
}


def chart(model):
    dtype = next(model.parameters()).dtype
    return LinearChart(torch.randn(D, 2, dtype=dtype), torch.zeros(D, dtype=dtype))


def setup(name, dtype=torch.float32):
    torch.manual_seed(0)
    model = MLP(in_features=D, num_classes=C, hidden=[8]).to(dtype).eval()
    x, y = torch.rand(5, D, dtype=dtype), torch.randint(0, C, (5,))
    build, call = OBJECTS[name]
    obj = build(model)
    args = {"xy": (x, y), "xyi": (x, y, torch.arange(5)), "x": (x,), "step": (x, y)}[call]
    run = obj.step if call == "step" else obj
    return obj, model, run, args


@pytest.mark.parametrize("name", OBJECTS)
def test_last_is_none_then_a_record_of_detached_0_dim_metrics(name):
    obj, _, run, args = setup(name)
    assert obj.last is None
    out = run(*args)
    assert isinstance(out, torch.Tensor) and out.dim() == 0 and math.isfinite(float(out.detach()))
    assert isinstance(obj.last, Record) and obj.last.metrics
    for key, value in obj.last.metrics.items():
        assert value.dim() == 0 and not value.requires_grad, key
        assert obj.last[key] == pytest.approx(float(value))
    assert set(obj.last.as_dict()) == set(obj.last.metrics)
    for tensor in [obj.last.x_adv, *obj.last.perturbations.values()]:
        assert tensor is None or not tensor.requires_grad


@pytest.mark.parametrize("name", OBJECTS)
def test_a_call_changes_only_what_the_object_documents(name):
    """Loss objects: nothing of the model (modes, weights, buffers, requires_grad, .grad); the
    loss carries the gradient to the weights. MSA, an optimiser: the weights, nothing else."""
    _, model, run, args = setup(name)
    for p in model.parameters():
        p.grad = torch.full_like(p, 2.0)
    snap = snapshot(model)
    out = run(*args)
    if name == "msa":
        assert not out.requires_grad
        for p, g in zip(model.parameters(), snap["grad"], strict=True):
            assert torch.equal(p.grad, g)
        assert [m.training for m in model.modules()] == snap["modes"]
        assert [p.requires_grad for p in model.parameters()] == snap["requires_grad"]
        assert any(not torch.equal(v, snap["state"][k]) for k, v in model.state_dict().items())
    else:
        assert_same(model, snap)
        assert out.requires_grad


@pytest.mark.parametrize("name", OBJECTS)
def test_bad_input_names_the_argument_and_changes_nothing(name):
    obj, model, run, args = setup(name)
    x = args[0].clone()
    x[0, 0] = math.nan
    snap = snapshot(model)
    with pytest.raises(ValueError, match="x"):
        run(x, *args[1:])
    assert obj.last is None
    assert_same(model, snap)


@pytest.mark.parametrize("name", OBJECTS)
def test_dtype_comes_from_the_inputs(name):
    _, _, run, args = setup(name, torch.float64)
    assert run(*args).dtype == torch.float64
    with pytest.raises(TypeError, match="dtype"):  # inputs of another dtype than the model's
        run(args[0].float(), *args[1:])


@pytest.mark.parametrize("name", OBJECTS)
def test_repr_names_the_class(name):
    obj, *_ = setup(name)
    assert type(obj).__name__ in repr(obj)
