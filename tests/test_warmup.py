"""robustreg.EpsWarmup: the radius (and a fixed step) grow linearly over the first epochs."""

from fractions import Fraction

import pytest
import torch

import robustreg
from tests.conftest import tiny_mlp


def _expected(full: float, epoch: int, epochs: int) -> float:
    """full · min(1, (epoch + 1) / epochs), in exact arithmetic, then rounded once."""
    return float(Fraction(full) * min(Fraction(1), Fraction(epoch + 1, epochs)))


@pytest.mark.parametrize("epochs", [1, 3, 5])
def test_pgdat_eps_and_alpha_follow_the_linear_ramp(epochs):
    reg = robustreg.PGDAT(tiny_mlp(), eps=0.3, alpha=0.01, steps=3, bounds=None)
    warmup = robustreg.EpsWarmup(reg, epochs)
    for epoch in [0, 1, 2, 4, 9, 0]:  # back to 0: a function of the epoch alone (resume)
        warmup.set_epoch(epoch)
        assert reg.eps == pytest.approx(_expected(0.3, epoch, epochs), rel=1e-15)
        assert reg.alpha == pytest.approx(_expected(0.01, epoch, epochs), rel=1e-15)
    warmup.set_epoch(epochs - 1)
    assert (reg.eps, reg.alpha) == (0.3, 0.01)  # the full values exactly from the last warm-up epoch


def test_warmed_loss_is_the_loss_of_an_engine_built_with_the_scaled_values():
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    model = tiny_mlp().eval()  # no running statistics moving between the two calls
    warmed = robustreg.PGDAT(model, eps=0.4, alpha=0.1, steps=4, bounds=None)
    robustreg.EpsWarmup(warmed, 4).set_epoch(1)  # half of the full values
    direct = robustreg.PGDAT(model, eps=0.2, alpha=0.05, steps=4, bounds=None)
    torch.manual_seed(3)
    a = warmed(x, y)
    torch.manual_seed(3)
    b = direct(x, y)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert float((warmed.last.x_adv - x).abs().max()) <= 0.2 + 1e-6


def test_default_alpha_rule_follows_the_scaled_eps():
    reg = robustreg.FastAT(tiny_mlp(), eps=0.2, bounds=None)  # α = None: 1.25ε
    robustreg.EpsWarmup(reg, 4).set_epoch(0)
    assert reg.alpha is None
    assert reg.step_size == pytest.approx(1.25 * 0.05)


def test_under_amata_only_eps_is_scaled_and_amata_keeps_setting_alpha():
    engine = robustreg.PGDAT(tiny_mlp(), eps=0.3, alpha=0.01, steps=10, bounds=None)
    amata = robustreg.Amata(engine, k_min=2, k_max=10, tau=0.6, total=10)
    warmup = robustreg.EpsWarmup(amata, 5)
    amata.set_epoch(0)
    warmup.set_epoch(0)
    amata(torch.randn(8, 6), torch.randint(0, 3, (8,)))
    assert engine.eps == pytest.approx(0.06)
    assert engine.steps == 2 and engine.alpha == pytest.approx(0.6 / 2)  # Amata's τ/K, not scaled


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((0,), ValueError, "epochs must be an int >= 1"),
        ((2.5,), TypeError, "epochs must be an int"),
        ((True,), TypeError, "epochs must be an int"),
    ],
)
def test_bad_epochs_are_refused_naming_the_argument(args, error, match):
    reg = robustreg.PGDAT(tiny_mlp(), eps=0.3, alpha=0.01, steps=3, bounds=None)
    with pytest.raises(error, match=match):
        robustreg.EpsWarmup(reg, *args)
    assert (reg.eps, reg.alpha) == (0.3, 0.01)


def test_not_an_engine_is_refused():
    with pytest.raises(TypeError, match="reg must be an adversarial engine"):
        robustreg.EpsWarmup(robustreg.VAT(tiny_mlp(), eps=1.0), 3)


def test_negative_epoch_is_refused_and_changes_nothing():
    reg = robustreg.PGDAT(tiny_mlp(), eps=0.3, alpha=0.01, steps=3, bounds=None)
    warmup = robustreg.EpsWarmup(reg, 3)
    with pytest.raises(ValueError, match="epoch must be an int >= 0"):
        warmup.set_epoch(-1)
    assert (reg.eps, reg.alpha) == (0.3, 0.01)
