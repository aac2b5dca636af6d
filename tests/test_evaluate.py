import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import robustreg
from robustreg import FGSM, PGD, ProgressEvent, gradient_masking_report, robust_accuracy

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


def test_on_batch_reports_running_accuracies_and_is_deprecated():
    model, x, y = self_labelled_linear(n=40)
    seen = []
    with pytest.warns(DeprecationWarning, match="use progress="):
        final = robust_accuracy(model, (x, y), attack=FGSM(0.05), batch_size=16, on_batch=seen.append)
    assert [a.n for a in seen] == [16, 32, 40] and seen[-1] == final


def test_progress_events_are_complete_ordered_and_count_what_the_result_reports():
    model, x, y = self_labelled_linear(n=40)
    attacks = {"fgsm": FGSM(0.05), "pgd": PGD(eps=0.1, steps=5, random_start=False)}
    events: list[ProgressEvent] = []
    res = robust_accuracy(model, (x, y), attack=attacks, batch_size=16, progress=events.append)
    start = events[0]
    assert (start.attack, start.batch, start.batches, start.done, start.total) == (None, 0, 3, 0, 6)
    assert (start.samples, start.clean, start.finished, start.robust) == (0, 0, 0, 0)
    assert start.correct == start.attacked == {"fgsm": 0, "pgd": 0}
    order = [(e.batch, e.attack, e.done, e.samples, e.finished) for e in events[1:]]
    assert order == [(1, "fgsm", 1, 16, 0), (1, "pgd", 2, 16, 16), (2, "fgsm", 3, 32, 16), (2, "pgd", 4, 32, 32),
                     (3, "fgsm", 5, 40, 32), (3, "pgd", 6, 40, 40)]  # fmt: skip
    # the running counts, by hand: each attack's hits per batch, accumulated
    correct = {"fgsm": 0, "pgd": 0}
    robust = 0
    with torch.no_grad():
        for b, i in enumerate(range(0, 40, 16)):
            xb, yb = x[i : i + 16], y[i : i + 16]
            ok = model(xb).argmax(1) == yb
            for j, (name, atk) in enumerate(attacks.items()):
                hit = model(atk(model, xb, yb)).argmax(1) == yb
                correct[name] += int(hit.sum())
                ok &= hit
                event = events[1 + 2 * b + j]
                assert event.correct == correct and event.attacked["fgsm"] == event.samples
                assert event.attacked["pgd"] == (event.samples if name == "pgd" else i)
            robust += int(ok.sum())
            assert events[2 + 2 * b].robust == robust
    assert 0 < robust < 40  # the counts had something to count
    last = events[-1]
    assert last.done == last.total and last.samples == last.finished == res.n == 40
    assert last.clean / last.samples == res.clean and last.robust / last.finished == res.robust
    assert {k: last.correct[k] / last.attacked[k] for k in attacks} == res.per_attack
    # the hook changes nothing: the same figures without it, also with random starts
    assert robust_accuracy(model, (x, y), attack=attacks, batch_size=16) == res
    random = {"pgd": PGD(eps=0.1, steps=3)}
    torch.manual_seed(0)
    quiet = robust_accuracy(model, (x, y), attack=random, batch_size=16)
    torch.manual_seed(0)
    assert robust_accuracy(model, (x, y), attack=random, batch_size=16, progress=lambda e: None) == quiet


def test_progress_without_a_length_and_a_hook_that_raises():
    model, x, y = self_labelled_linear(n=20)
    events = []
    gen = ((x[i : i + 8], y[i : i + 8]) for i in range(0, 20, 8))
    res = robust_accuracy(model, gen, attack=FGSM(0.05), progress=events.append)
    assert [(e.batches, e.total) for e in events] == [(None, None)] * 4
    assert [e.done for e in events] == [0, 1, 2, 3] and events[-1].samples == res.n == 20
    net = TinyConvBN().train()

    def stop(event: ProgressEvent) -> None:
        if event.done == 1:
            raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        robust_accuracy(net, (torch.rand(8, 1, 8, 8), torch.randint(0, 5, (8,))), attack=FGSM(0.1), progress=stop)
    assert net.training and net.bn.training  # modes restored


def test_masking_report_progress_names_every_attack_and_counts_its_accuracies():
    model, x, y = self_labelled_linear(n=40)
    events = []
    report = gradient_masking_report(
        model, (x, y), eps=0.05, steps=(2, 4), restarts=2, apgd=False, batch_size=16, progress=events.append
    )
    names = [k for k in report.accuracy if k != "clean"]
    assert len(names) == 7 and events[0].attack is None and events[0].total == 3 * 7
    assert [e.attack for e in events[1:]] == names * 3 and [e.done for e in events] == list(range(22))
    last = events[-1]
    assert last.clean / last.samples == report.accuracy["clean"] == 1.0
    assert {k: last.correct[k] / last.attacked[k] for k in names} == {k: report.accuracy[k] for k in names}


def test_progress_must_be_callable():
    model, x, y = self_labelled_linear()
    with pytest.raises(TypeError, match="progress must be callable or None, got int"):
        robust_accuracy(model, (x, y), attack=FGSM(0.1), progress=1)
    with pytest.raises(TypeError, match="progress must be callable or None, got str"):
        gradient_masking_report(model, (x, y), progress="bar")


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
