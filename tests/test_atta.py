"""ATTA: each sample's perturbation carried across epochs (Zheng et al., CVPR 2020), its reset
schedule, storage, index checks and its refusal to store non-finite perturbations."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustreg import ATTA

from .conftest import CountingLinear, TinyConvBN, assert_same, linear_atta, snapshot


def test_atta_carries_each_samples_perturbation_across_epochs():
    reg, model = linear_atta()
    x, y = torch.randn(10, 5), torch.randint(0, 2, (10,))
    w = model.fc.weight.detach()
    direction = torch.sign(w[1 - y] - w[y])
    for epoch in range(3):
        reg.set_epoch(epoch)
        for rows in (torch.tensor([3, 0, 7]), torch.tensor([1, 2, 4, 5, 6, 8, 9])):
            reg(x[rows], y[rows], rows)
            assert reg.last["carried"] == (1.0 if epoch else 0.0)
        # One step per epoch, each from the previous epoch's perturbation.
        torch.testing.assert_close(reg.memory, 0.1 * (epoch + 1) * direction)


def test_atta_resets_on_schedule():
    reg, _ = linear_atta(reset_every=2)
    x, y, index = torch.randn(4, 5), torch.randint(0, 2, (4,)), torch.tensor([9, 1, 2, 3])
    carried = []
    for epoch in range(5):
        reg.set_epoch(epoch)
        reg(x, y, index)
        carried.append(reg.last["carried"])
    assert carried == [0.0, 1.0, 0.0, 1.0, 0.0]  # fresh at epochs 0, 2, 4
    assert float(reg.memory[9].abs().max()) == pytest.approx(0.1)


def test_atta_storage_on_cpu_gives_the_same_numbers():
    x, y, index = torch.randn(4, 5, dtype=torch.float64), torch.randint(0, 2, (4,)), torch.tensor([5, 6, 7, 8])
    out = []
    for storage in ("input", "cpu"):
        torch.manual_seed(0)
        reg, model = linear_atta(storage=storage, random_start=True, eps=0.3)
        model.double()
        for epoch in range(2):
            reg.set_epoch(epoch)
            loss = reg(x, y, index)
        out.append((loss.detach(), reg.memory.clone()))
        assert reg.memory.dtype == torch.float64 and reg.memory_bytes == 10 * 5 * 8
    torch.testing.assert_close(out[0], out[1])


@pytest.mark.parametrize(
    ("index", "exc", "match"),
    [
        (torch.tensor([0, 1, 10]), ValueError, r"outside \[0, dataset_size\) = \[0, 10\)"),
        (torch.tensor([0, -1, 2]), ValueError, "outside"),
        (torch.tensor([0, 1]), ValueError, r"index must have shape \(3,\)"),
        (torch.tensor([0.0, 1.0, 2.0]), TypeError, "integer dataset indices"),
        (torch.tensor([1, 1, 2]), ValueError, "duplicates"),
        ([0, 1, 2], TypeError, "torch.Tensor"),
    ],
)
def test_atta_bad_indices_raise_before_anything_changes(index, exc, match):
    reg, model = linear_atta()
    x, y = torch.randn(3, 5), torch.randint(0, 2, (3,))
    reg(x, y, torch.tensor([0, 1, 2]))
    before = reg.memory.clone()
    snap = snapshot(model)
    with pytest.raises(exc, match=match):
        reg(x, y, index)
    assert torch.equal(reg.memory, before)
    assert_same(model, snap)


def test_atta_changed_dataset_or_sample_shape_is_an_error():
    reg, _ = linear_atta()
    x, y = torch.randn(3, 5), torch.randint(0, 2, (3,))
    reg(x, y, torch.tensor([0, 1, 2]))
    reg.dataset_size = 12
    with pytest.raises(ValueError, match="dataset_size changed from 10 to 12"):
        reg(x, y, torch.tensor([0, 1, 2]))
    reg.clear()
    reg(x, y, torch.tensor([0, 1, 11]))
    assert reg.memory.shape == (12, 5)
    with pytest.raises(ValueError, match="sample shape"):
        reg(torch.randn(3, 6), y, torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match=r"call reg\(x, y, index\)"):
        reg._loss(x, y)


def test_atta_loss_is_ce_at_the_carried_adversary():
    model = TinyConvBN()
    model.drop.p = 0.0
    reg = ATTA(model, 20, eps=0.1, alpha=0.04, steps=2)
    x, y, index = torch.rand(5, 1, 8, 8), torch.randint(0, 5, (5,)), torch.arange(5) * 3
    for epoch in range(2):
        reg.set_epoch(epoch)
        loss = reg(x, y, index)
    torch.testing.assert_close(loss, F.cross_entropy(model(reg.last.x_adv), y))
    torch.testing.assert_close(reg.memory[index], reg.last.x_adv - x)
    assert float((reg.last.x_adv - x).abs().max()) <= 0.1 + 1e-6


class NaNForSomeSamples(nn.Module):
    """Finite logits for samples whose first feature is below 0.5, NaN (and a NaN gradient) above."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 2)

    def forward(self, x):
        return self.fc(x) + torch.sqrt(0.5 - x[:, :1])  # sqrt of a negative number is NaN


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_atta_never_stores_a_non_finite_perturbation(norm):
    model = NaNForSomeSamples()
    reg = ATTA(model, 6, eps=0.1, alpha=0.05, steps=1, norm=norm, random_start=False, bounds=None)
    x = torch.rand(6, 5) * 0.3
    x[1, 0] = x[4, 0] = 0.9  # these two produce a NaN gradient
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    loss = reg(x, y, torch.arange(6))
    assert not bool(torch.isfinite(loss))  # not hidden: the loss shows it
    assert bool(torch.isfinite(reg.memory).all())
    assert bool((reg.memory[[0, 2, 3, 5]].abs().sum(1) > 0).all())
    if norm == "l2":  # g/‖g‖ of a NaN gradient is NaN (sign(NaN) is 0 in torch: ℓ∞ does not move)
        assert reg._seen.tolist() == [True, False, True, True, False, True]
        torch.testing.assert_close(reg.memory[[1, 4]], torch.zeros(2, 5))  # the previous (initial) δ


def test_reset_is_the_deprecated_name_of_reset_every():
    model = CountingLinear()
    with pytest.warns(DeprecationWarning, match="reset_every"):
        reg = ATTA(model, 10, reset=3)
    assert reg.reset_every == 3
    with pytest.warns(DeprecationWarning, match="reset_every"):
        assert reg.reset == 3
    with pytest.warns(DeprecationWarning, match="reset_every"):
        reg.reset = 5
    assert reg.reset_every == 5
    with pytest.raises(TypeError, match="reset_every"):
        ATTA(model, 10, reset=3, reset_every=3)
    with pytest.raises(ValueError, match="reset_every"):
        ATTA(model, 10, reset_every=0)


def test_atta_without_index_says_it_needs_one():
    reg, _ = linear_atta()
    with pytest.raises(TypeError, match=r"reg\(x, y, index\)"):
        reg(torch.randn(3, 5), torch.randint(0, 2, (3,)))
