"""Real MNIST (kept out of CI: ``python -m pytest -m slow``): PGD-AT and Fast-AT give a
SmallCNN real robustness where natural training gives almost none, measured with AutoAttack
standard beside PGD and CW (:func:`robustreg.recommended_attacks`). On the PGD-AT model the
evaluation finds no sign of gradient masking: the report's masking and convergence checks pass, and
AutoAttack's FAB-T and gradient-free Square break at most 2% of the points beyond APGD. The report's
APGD-gap check is not asserted: robustreg's fixed-step PGD/CW stay 3 to 5 points above APGD on such
a model (docs/evaluation.md, "Adversarially trained MNIST models"), which is why the recommended set
includes AutoAttack. Needs the MNIST files of ``../shared/data`` (or ``$ROBUSTREG_DATA``)."""

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from robustreg import PGDAT, FastAT, gradient_masking_report, recommended_attacks, robust_accuracy
from robustreg.data import load_vision
from robustreg.models import SmallCNN

DATA = Path(os.environ.get("ROBUSTREG_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mnist():
    raw = DATA / "MNIST" / "raw"
    if not raw.is_dir():
        pytest.skip(f"no MNIST files in {raw}")
    (xs, ys), (xt, yt) = load_vision("mnist", DATA, train=True), load_vision("mnist", DATA, train=False)
    return (xs[:6000], ys[:6000]), (xt[:500], yt[:500])


def fit(loss_fn, model, data, epochs=3):
    torch.manual_seed(0)
    x, y = data
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(x.shape[0]).split(100):
            loss = loss_fn(x[idx], y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


def test_adversarial_training_is_robust_on_mnist(mnist):
    train, test = mnist
    eps = 0.2  # at 0.1 a natural SmallCNN keeps ~75% PGD-20 accuracy; at 0.2 about 20%
    attack = recommended_attacks(eps, version="standard")  # AutoAttack standard, PGD-40 and CW-40
    results = {}
    for name in ("natural", "pgdat", "fast"):
        torch.manual_seed(0)
        model = SmallCNN()
        loss_fn = {
            "natural": lambda x, y, m=model: F.cross_entropy(m(x), y),
            "pgdat": PGDAT(model, eps=eps, alpha=eps / 4, steps=7),
            "fast": FastAT(model, eps=eps),
        }[name]
        fit(loss_fn, model, train)
        results[name] = robust_accuracy(model, test, attack=attack)
        if name == "pgdat":
            report = gradient_masking_report(
                model, test, eps=eps, steps=(10, 40), restarts=3, tolerance=0.02, apgd=True, gap_tolerance=0.02
            )
            checks = {c.name: c for c in report.checks}
            for check in ("more steps", "restarts", "fgsm vs pgd", "unbounded", "converged"):
                assert checks[check].passed, str(report)
            assert checks["apgd gap"].passed is not None, str(report)  # measured, not skipped
            # FAB-T and the gradient-free Square on top of APGD: a masked gradient leaves them much to find
            standard = results[name].per_attack["autoattack-standard"]
            assert report.accuracy["apgd"] - standard <= 0.02, (str(report), results[name])
    assert results["natural"].clean > 0.9
    assert results["natural"].robust < 0.4
    # AutoAttack standard on the 500 images (2026-12): natural 11.4%, PGD-AT 71.4%, Fast-AT 38.6%, where
    # PGD-40 said 18.4, 76.4 and 52.4%. Fast-AT's single-step training leaves a model PGD overrates (the
    # report flags it as not converged: docs/evaluation.md), hence its smaller margin, set with AutoAttack.
    for name, margin in (("pgdat", 0.3), ("fast", 0.2)):
        assert results[name].clean > 0.9, results
        assert results[name].robust > results["natural"].robust + margin, results
