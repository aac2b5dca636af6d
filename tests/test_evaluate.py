import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import robustreg
from robustreg import FGSM, PGD, gradient_masking_report, robust_accuracy

from .conftest import TinyConvBN


def self_labelled_linear(n: int = 64, dim: int = 8):
    """A 2-class linear model and data in [0, 1] labelled by the model itself (clean acc 1)."""
    lin = nn.Linear(dim, 2)
    with torch.no_grad():
        lin.bias.zero_()
        lin.weight.copy_(torch.randn(2, dim))
    x = torch.rand(n, dim)
    with torch.no_grad():
        logits = lin(x - 0.5)
    y = logits.argmax(1)
    model = nn.Sequential(Shift(), lin)
    return model, x, y


class Shift(nn.Module):
    def forward(self, x):
        return x - 0.5


class Quantised(nn.Module):
    """Gradient masking by construction: rounding has a zero gradient almost everywhere."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x * 4) / 4)


def test_tensors_and_dataloader_agree_and_mode_is_restored():
    model, x, y = TinyConvBN().train(), torch.rand(20, 1, 8, 8), torch.randint(0, 5, (20,))
    attack = PGD(eps=0.05, steps=3, random_start=False)
    a = robust_accuracy(model, (x, y), attack=attack, batch_size=7)
    b = robust_accuracy(model, DataLoader(TensorDataset(x, y), batch_size=6), attack=attack)
    assert a == b and a.n == 20
    assert model.training and model.bn.training
    with torch.no_grad():
        clean = float((model.eval()(x).argmax(1) == y).float().mean())
    assert a.clean == pytest.approx(clean)
    assert a.robust <= a.clean


def test_robust_means_correct_under_every_attack():
    model, x, y = self_labelled_linear()
    attacks = {"fgsm": FGSM(0.05), "pgd": PGD(eps=0.1, steps=10, random_start=False)}
    res = robust_accuracy(model, (x, y), attack=attacks)
    assert res.clean == 1.0
    assert res.robust <= min(res.per_attack.values())
    # The worst case over attacks is per sample: compute it by hand.
    with torch.no_grad():
        ok = torch.ones_like(y, dtype=torch.bool)
        for atk in attacks.values():
            ok &= model(atk(model, x, y)).argmax(1) == y
    assert res.robust == float(ok.float().mean())
    assert 0 < res.robust < 1


def test_masking_report_passes_for_a_linear_model_and_flags_a_masked_one():
    model, x, y = self_labelled_linear()
    report = gradient_masking_report(model, (x, y), eps=0.05, steps=(5, 20), restarts=2)
    assert report.passed, str(report)
    masked = Quantised(model)
    report = gradient_masking_report(masked, (x, y), eps=0.05, steps=(5, 20), restarts=2)
    assert not report.passed
    failed = {c.name for c in report.checks if not c.passed}
    assert "unbounded" in failed
    assert "FAIL" in str(report)


def test_evaluation_argument_errors():
    model, x, y = self_labelled_linear()
    with pytest.raises(TypeError, match="attack must be"):
        robust_accuracy(model, (x, y), attack={})
    with pytest.raises(ValueError, match="data tensors differ"):
        robust_accuracy(model, (x, y[:3]), attack=FGSM(0.1))
    with pytest.raises(ValueError, match="few < many"):
        gradient_masking_report(model, (x, y), steps=(10, 10))
    with pytest.raises(ValueError, match="no samples"):
        robust_accuracy(model, [], attack=FGSM(0.1))


def test_masking_report_uses_every_batch_of_a_generator():
    model, x, y = self_labelled_linear(n=40)
    gen = ((x[i : i + 8], y[i : i + 8]) for i in range(0, 40, 8))
    report = gradient_masking_report(model, gen, eps=0.05, steps=(2, 4), restarts=2)
    full = gradient_masking_report(model, [x, y], eps=0.05, steps=(2, 4), restarts=2)
    assert report.accuracy["clean"] == full.accuracy["clean"] == 1.0
    assert report.accuracy["fgsm"] == full.accuracy["fgsm"]  # deterministic attack, all 40 samples


def test_masking_report_flags_an_under_powered_attack_as_not_converged_and_passes_a_converged_one():
    model, x, y = self_labelled_linear(n=200)
    # k·α = 20 · ε/40 = ε/2: the steps cannot even reach the ball's surface from the centre
    weak = gradient_masking_report(model, (x, y), eps=0.1, steps=(5, 20), restarts=5, alpha=0.1 / 40)
    failed = {c.name for c in weak.checks if c.passed is False}
    assert "converged" in failed, str(weak)
    assert "not converged" in str(weak)
    if robustreg.autoattack.available():
        assert "apgd gap" in failed, str(weak)
    strong = gradient_masking_report(model, (x, y), eps=0.1, steps=(5, 20), restarts=5)
    assert strong.passed, str(strong)
    assert 0 < strong.accuracy["pgd-20x5"] < 1  # the check had something to compare
    names = {c.name: c.passed for c in strong.checks}
    assert names["converged"] is True
    assert names["apgd gap"] is (True if robustreg.autoattack.available() else None)


def test_masking_report_without_pyautoattack_skips_the_gap_check_and_apgd_true_needs_it(monkeypatch):
    model, x, y = self_labelled_linear()
    monkeypatch.setitem(sys.modules, "pyautoattack", None)
    report = gradient_masking_report(model, (x, y), eps=0.05, steps=(5, 20), restarts=2)
    (gap,) = [c for c in report.checks if c.name == "apgd gap"]
    assert gap.passed is None and "not installed" in gap.detail and "[skip]" in str(report)
    assert report.passed and "apgd" not in report.accuracy
    with pytest.raises(ImportError, match="pip install"):
        gradient_masking_report(model, (x, y), eps=0.05, steps=(2, 4), restarts=2, apgd=True)


def test_on_batch_reports_running_accuracies():
    model, x, y = self_labelled_linear(n=40)
    seen = []
    final = robust_accuracy(model, (x, y), attack=FGSM(0.05), batch_size=16, on_batch=seen.append)
    assert [a.n for a in seen] == [16, 32, 40] and seen[-1] == final


def test_robust_accuracy_checks_each_batch_with_the_shared_errors():
    model = TinyConvBN().train()
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 5, (6,))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    atk = PGD(eps=0.1, steps=1)
    nan = x.clone()
    nan[2, 0, 0, 0] = float("nan")
    flat = nn.Sequential(nn.Flatten(), nn.Linear(64, 1), nn.Flatten(0))
    for m, data, exc, match in [
        (flat, (x, y), ValueError, r"model must return .*logits of shape \(B, num_classes\)"),
        (model, (x, torch.full_like(y, 5)), ValueError, r"y holds class 5, outside the model's classes 0\.\.4"),
        (model, (x, -1 - y), ValueError, "y holds negative class indices"),
        (model, (x, y.float()), TypeError, "y must hold integer class indices"),
        (model, (nan, y), ValueError, "x contains NaN or inf"),
        (model, (x.long(), y), TypeError, "x must be a floating-point tensor"),
        (model, [x, y, x], TypeError, "data must yield"),
        (model, 3, TypeError, "data must be an iterable"),
        (lambda t: t, (x, y), TypeError, r"model must be a torch\.nn\.Module"),
    ]:
        with pytest.raises(exc, match=match):
            robust_accuracy(m, data, attack=atk)
        assert model.training and all(torch.equal(state[k], v) for k, v in model.state_dict().items())
