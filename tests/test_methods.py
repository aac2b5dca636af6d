"""Each engine against a slow, literal transcription of its paper's (official code's) algorithm."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import robustreg
from robustreg import PGDAT, TRADES, FastAT, FreeAT

from .conftest import TinyConvBN


def model_and_batch(seed: int = 0):
    torch.manual_seed(seed)
    model = TinyConvBN()
    model.drop.p = 0.0
    return model.train(), torch.rand(8, 1, 8, 8), torch.randint(0, 5, (8,))


def madry_pgd(model, x, y, eps, alpha, steps, seed):
    """Madry et al.'s ℓ∞ PGD with a uniform start, written out (model in eval mode)."""
    model = copy.deepcopy(model).eval()
    torch.manual_seed(seed)
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + alpha * g.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv


def test_pgdat_adversary_is_madry_pgd():
    model, x, y = model_and_batch()
    ref = madry_pgd(model, x, y, eps=0.1, alpha=0.02, steps=7, seed=5)
    torch.manual_seed(5)
    reg = PGDAT(model, eps=0.1, alpha=0.02, steps=7)
    reg._num_classes = 5  # skip the probe so both draw the same random start
    reg(x, y)
    torch.testing.assert_close(reg.last.x_adv, ref)


def test_fast_at_is_wong_et_al():
    """Wong et al.'s ``train_fgsm.py`` step: uniform δ, clamp to box, one FGSM step of 1.25ε,
    clamp to the ball and the box, loss at x + δ (attack in train mode)."""
    model, x, y = model_and_batch()
    eps = 0.1
    ref_model = copy.deepcopy(model)
    torch.manual_seed(11)
    delta = torch.empty_like(x).uniform_(-eps, eps)
    delta = torch.clamp(delta, 0 - x, 1 - x).requires_grad_(True)
    F.cross_entropy(ref_model(x + delta), y).backward()
    delta = torch.clamp(delta + 1.25 * eps * delta.grad.sign(), -eps, eps)
    delta = torch.clamp(delta, 0 - x, 1 - x).detach()
    ref_loss = F.cross_entropy(ref_model(x + delta), y)

    torch.manual_seed(11)
    reg = FastAT(model, eps=eps)
    reg._num_classes = 5
    loss = reg(x, y)
    torch.testing.assert_close(reg.last.x_adv, x + delta)
    torch.testing.assert_close(loss, ref_loss)
    # The train-mode attack pass updated the running statistics exactly as the reference's.
    torch.testing.assert_close(model.bn.running_mean, ref_model.bn.running_mean)


def test_trades_is_the_official_objective_and_attack():
    """The official ``trades_loss``: eval-mode sign-PGD on sum-KL from x + 0.001·N(0, I), then
    CE(f(x), y) + β·sum-KL/batch in train mode."""
    model, x, y = model_and_batch()
    # The official start x + 0.001·N(0, I) is not clamped into the box; ours is (x' must be a
    # valid input). Away from the box's edges the two are the same algorithm.
    x = 0.01 + 0.98 * x
    eps, alpha, steps, beta = 0.1, 0.02, 5, 6.0
    ref_model = copy.deepcopy(model)
    kl = torch.nn.KLDivLoss(reduction="sum")
    torch.manual_seed(7)
    ref_model.eval()
    x_adv = x + 0.001 * torch.randn_like(x)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss_kl = kl(F.log_softmax(ref_model(x_adv), 1), F.softmax(ref_model(x), 1))
        (g,) = torch.autograd.grad(loss_kl, x_adv)
        x_adv = x_adv.detach() + alpha * g.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    ref_model.train()
    logits = ref_model(x)
    ref = F.cross_entropy(logits, y) + beta * kl(F.log_softmax(ref_model(x_adv), 1), F.softmax(ref_model(x), 1)) / 8

    torch.manual_seed(7)
    reg = TRADES(model, eps=eps, alpha=alpha, steps=steps, beta=beta)
    reg._num_classes = 5
    loss = reg(x, y)
    torch.testing.assert_close(reg.last.x_adv, x_adv)
    torch.testing.assert_close(loss, ref)
    # And exactly on the adversary actually used:
    torch.testing.assert_close(
        loss,
        F.cross_entropy(model(x), y) + beta * kl(F.log_softmax(model(reg.last.x_adv), 1), F.softmax(model(x), 1)) / 8,
    )


def test_free_at_replays_update_the_perturbation_from_the_users_backward():
    """Shafahi et al.'s loop: per replay, loss at clamp(x + δ); after the backward,
    δ ← clip_ε(δ + ε·sign(∇_δ)); δ carries over to the next replay and the next batch."""
    model, x, y = model_and_batch()
    eps = 0.1
    reg = FreeAT(model, eps=eps)
    ref_delta = torch.zeros_like(x)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ref_model = copy.deepcopy(model)
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.1)
    for _ in range(3):
        d = ref_delta.clone().requires_grad_(True)
        ref_loss = F.cross_entropy(ref_model((x + d).clamp(0, 1)), y)
        ref_opt.zero_grad()
        ref_loss.backward()
        ref_delta = (ref_delta + eps * d.grad.sign()).clamp(-eps, eps)
        ref_opt.step()

        loss = reg(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        torch.testing.assert_close(loss, ref_loss)
        torch.testing.assert_close(reg.delta, ref_delta)
    assert float(reg.delta.abs().max()) > 0


def test_free_at_batches_of_other_sizes_and_reset():
    model, x, y = model_and_batch()
    reg = FreeAT(model, eps=0.1)
    reg(x[:5], y[:5]).backward()
    assert reg.delta.shape == (5, 1, 8, 8)
    first = reg.delta.clone()
    reg(x, y).backward()  # larger batch: the buffer grows with zero rows
    assert reg.delta.shape == (8, 1, 8, 8)
    reg(x[:2], y[:2])  # smaller batch: uses the first rows, no backward -> no update
    torch.testing.assert_close(reg.last.x_adv, (x[:2] + reg.delta[:2]).clamp(0, 1))
    assert not torch.equal(reg.delta[:5], first)  # the 8-batch backward moved them
    reg.reset()
    assert reg.delta is None
    reg(x, y)
    torch.testing.assert_close(reg.last.x_adv, x)  # starts from zero again


def test_free_at_skips_non_finite_gradients():
    model, x, y = model_and_batch()
    reg = FreeAT(model, eps=0.1)
    reg(x, y).backward()
    before = reg.delta.clone()
    (reg(x, y) * math.nan).backward()
    torch.testing.assert_close(reg.delta, before)


def test_replay_yields_each_batch_m_times():
    batches = [torch.tensor([i]) for i in range(3)]
    out = list(robustreg.replay(batches, 4))
    assert [int(b) for b in out] == [0] * 4 + [1] * 4 + [2] * 4
    with pytest.raises(ValueError, match="m must be an int >= 1"):
        list(robustreg.replay(batches, 0))


def test_works_with_accelerate_backward():
    from accelerate import Accelerator

    model, x, y = model_and_batch()
    plain = copy.deepcopy(model)
    acc = Accelerator(cpu=True)
    wrapped = acc.prepare(model)
    torch.manual_seed(1)
    reg = PGDAT(wrapped, eps=0.1, steps=2)
    reg._num_classes = 5
    acc.backward(reg(x, y))
    torch.manual_seed(1)
    ref = PGDAT(plain, eps=0.1, steps=2)
    ref._num_classes = 5
    ref(x, y).backward()
    for a, b in zip(model.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad)
