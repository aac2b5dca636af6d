import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

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
