"""robustreg.bayes: SGAdaLD against its update written out and its noise against the stated
variance (statistically, seeded); the SGLD adversary against a Gaussian it must sample, against
its energy's gradient written out, and as an attack."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustreg.bayes import BAL, SGAdaLD, SGLDAdversary, mean_log_likelihood, squared_l2

from .conftest import assert_same, snapshot

# -- SGAdaLD ------------------------------------------------------------------------------------


def quadratic_grads(theta: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """∇ of Σ a·θ²/2 + θ³/3 (a gradient that changes along the path)."""
    return a * theta + theta.square()


@pytest.mark.parametrize("v0", [None, 0.5])
def test_sgadald_without_noise_and_tau_infinite_is_preconditioned_sgd(v0):
    torch.manual_seed(0)
    a = torch.rand(7, dtype=torch.float64) + 0.5
    theta = nn.Parameter(torch.randn(7, dtype=torch.float64))
    opt = SGAdaLD([theta], lr=0.3, tau=math.inf, temperature=0.0, eps=1e-8, v0=v0)
    ref = theta.detach().numpy().copy()
    v = None
    for _ in range(5):
        theta.grad = quadratic_grads(theta.detach(), a)
        opt.step()
        g = quadratic_grads(torch.from_numpy(ref), a).numpy()
        v = (g**2 if v0 is None else np.full(7, v0)) if v is None else v  # frozen at its start
        ref = ref - 0.3**2 * g / np.sqrt(v + 1e-8)
        np.testing.assert_allclose(theta.detach().numpy(), ref, rtol=1e-12, atol=1e-12)


def test_sgadald_running_average_of_the_squared_gradient():
    torch.manual_seed(1)
    a = torch.rand(5, dtype=torch.float64) + 0.5
    theta = nn.Parameter(torch.randn(5, dtype=torch.float64))
    opt = SGAdaLD([theta], lr=0.2, tau=4.0, temperature=0.0)
    ref, v = theta.detach().numpy().copy(), None
    for _ in range(6):
        theta.grad = quadratic_grads(theta.detach(), a)
        opt.step()
        g = quadratic_grads(torch.from_numpy(ref), a).numpy()
        v = g**2 if v is None else (1 - 1 / 4) * v + (1 / 4) * g**2
        ref = ref - 0.2**2 * g / np.sqrt(v + 1e-8)
    np.testing.assert_allclose(theta.detach().numpy(), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(opt.state[theta]["v"].numpy(), v, rtol=1e-12)


def test_sgadald_noise_has_the_stated_variance_and_is_clamped_where_it_would_be_negative():
    n = 40_000
    lr, c, temp, eps = 0.1, 0.5, 2.0, 1e-8
    g0 = torch.linspace(0.05, 8.0, n, dtype=torch.float64)  # σ² = 0.002/g0² − 10⁻⁴ changes sign at g0 ≈ 4.5
    theta = nn.Parameter(torch.zeros(n, dtype=torch.float64))
    opt = SGAdaLD([theta], lr=lr, tau=math.inf, friction=c, temperature=temp, eps=eps,
                  generator=torch.Generator().manual_seed(0))  # fmt: skip
    theta.grad = g0.clone()
    opt.step()
    inv = 1 / (g0.square() + eps)
    drift = -(lr**2) * inv.sqrt() * g0
    var = temp * 2 * c * lr**3 * inv - lr**4
    xi = theta.detach() - drift
    pos = var > 0
    assert 1000 < int(pos.sum()) < n - 1000 and opt.state[theta]["clamped"] == int((~pos).sum())
    assert torch.equal(xi[~pos], torch.zeros_like(xi[~pos]))  # no noise where σ² ≤ 0
    z = (xi[pos] / var[pos].sqrt()).numpy()
    m = len(z)
    assert abs(z.mean()) < 4 / math.sqrt(m)
    assert abs(z.var() - 1) < 4 * math.sqrt(2 / m)
    assert abs(np.mean(z[:-1] * z[1:])) < 4 / math.sqrt(m)  # independent draws


def test_sgadald_is_seeded_by_its_generator_and_rejects_bad_arguments():
    def run(seed):
        p = nn.Parameter(torch.ones(10))
        opt = SGAdaLD([p], lr=0.1, friction=10.0, generator=torch.Generator().manual_seed(seed))
        p.grad = torch.ones(10)
        opt.step()
        return p.detach()

    assert torch.equal(run(3), run(3)) and not torch.equal(run(3), run(4))
    p = [nn.Parameter(torch.ones(2))]
    for kwargs, err, word in [
        ({"lr": 0}, ValueError, "lr"),
        ({"lr": 0.1, "tau": 0.5}, ValueError, "tau"),
        ({"lr": 0.1, "temperature": -1}, ValueError, "temperature"),
        ({"lr": 0.1, "friction": math.nan}, ValueError, "friction"),
        ({"lr": 0.1, "v0": -1}, ValueError, "v0"),
        ({"lr": 0.1, "generator": 1}, TypeError, "generator"),
    ]:
        with pytest.raises(err, match=word):
            SGAdaLD(p, **kwargs)


# -- the SGLD adversary -------------------------------------------------------------------------


def test_sgld_samples_the_gaussian_its_energy_defines():
    """log p(y|x̃) = −a·x̃² and cost α(x̃ − x)²: U = (α − a)x̃² − 2αx·x̃ + const, so
    x̃ ~ N(αx/(α − a), T/(2(α − a))): the mean moves *away* from the likelihood's peak (the
    adversary lowers the log-likelihood), pulled back by the cost."""
    a, alpha, temp, x0 = 1.0, 2.0, 0.5, 1.0
    n = 20_000
    x = torch.full((n, 1), x0, dtype=torch.float64)
    y = torch.zeros(n, dtype=torch.long)
    adv = SGLDAdversary(steps=1500, step_size=0.005, alpha=alpha, temperature=temp, bounds=None,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    samples, _ = adv.sample(lambda xa, _y: -a * xa[:, 0].square(), x, y)
    mean, var = alpha * x0 / (alpha - a), temp / (2 * (alpha - a))
    # ULA's stationary variance is σ²/(1 − η(α − a)) (0.5% here) plus sampling error
    assert abs(float(samples.mean()) - mean) < 0.02
    assert abs(float(samples.var()) / var - 1) < 0.03


def test_sgld_steps_descend_the_written_out_energy_over_the_posterior_samples():
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).double() for _ in range(3)]
    x = torch.rand(5, 3, 2, 2, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1])
    adv = SGLDAdversary(steps=3, step_size=0.2, alpha=0.7, temperature=0.0, bounds=None)
    got, y_rep = adv.sample(mean_log_likelihood(models), x, y)
    xa = x.clone()
    for _ in range(3):  # U = (1/S)Σ_s log softmax(f_s(x̃))_y + α‖x̃ − x‖², written out per model
        xa.requires_grad_(True)
        u = sum(F.log_softmax(m(xa), 1)[torch.arange(5), y].sum() for m in models) / 3
        u = u + 0.7 * (xa - x).square().sum()
        (g,) = torch.autograd.grad(u, xa)
        xa = (xa - 0.2 * g).detach()
    torch.testing.assert_close(got, xa)
    assert torch.equal(y_rep, y)
    written = sum(F.log_softmax(m(got), 1)[torch.arange(5), y] for m in models) / 3
    written = written + 0.7 * (got - x).flatten(1).square().sum(1)
    torch.testing.assert_close(adv.energy(mean_log_likelihood(models), got, x, y), written)
    torch.testing.assert_close(squared_l2(got, x), (got - x).flatten(1).square().sum(1))


def test_sgld_chains_are_independent_copies_of_the_batch():
    x, y = torch.rand(4, 1, 3, 3), torch.tensor([0, 1, 0, 1])
    model = nn.Sequential(nn.Flatten(), nn.Linear(9, 2))
    adv = SGLDAdversary(steps=2, step_size=0.05, temperature=1.0, chains=3, generator=torch.Generator().manual_seed(0))
    xa, ya = adv.sample(mean_log_likelihood([model]), x, y)
    assert xa.shape == (12, 1, 3, 3) and torch.equal(ya, y.repeat(3))
    assert not torch.equal(xa[:4], xa[4:8])  # each chain its own noise
    assert xa.min() >= 0 and xa.max() <= 1


def test_sgld_as_an_attack_raises_the_loss_and_changes_nothing_in_the_model():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 3)
    )
    model.train()
    snap = snapshot(model)
    x, y = torch.rand(32, 1, 4, 4), torch.randint(0, 3, (32,))
    adv = SGLDAdversary(steps=10, step_size=0.05, alpha=0.1, generator=torch.Generator().manual_seed(1))
    xa = adv(model, x, y)
    assert xa.shape == x.shape and xa.min() >= 0 and xa.max() <= 1
    assert_same(model, snap)
    with torch.no_grad():
        model.eval()
        assert F.cross_entropy(model(xa), y) > F.cross_entropy(model(x), y)


def test_sgld_rejects_bad_arguments():
    for kwargs, err, word in [
        ({"steps": -1}, ValueError, "steps"),
        ({"step_size": 0}, ValueError, "step_size"),
        ({"alpha": -1}, ValueError, "alpha"),
        ({"temperature": math.inf}, ValueError, "temperature"),
        ({"chains": 0}, ValueError, "chains"),
        ({"cost": 3}, TypeError, "cost"),
        ({"bn": "sometimes"}, ValueError, "bn"),
        ({"generator": 0}, TypeError, "generator"),
    ]:
        with pytest.raises(err, match=word):
            SGLDAdversary(**kwargs)
    with pytest.raises(ValueError, match="bounds"):
        SGLDAdversary()(nn.Linear(4, 2), torch.full((2, 4), 2.0), torch.tensor([0, 1]))


# -- BAL ----------------------------------------------------------------------------------------


def small_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 3)).double()


def test_bal_predicts_the_average_of_the_chains_probabilities_and_attacks_see_the_average():
    model = small_net()
    bal = BAL(model, data_size=100, chains=3)
    with torch.no_grad():
        for s, member in enumerate(bal.chains):  # distinct members
            for p in member.parameters():
                p.add_(0.3 * s * torch.randn_like(p))
    x = torch.rand(6, 1, 4, 4, dtype=torch.float64)
    expected = sum(F.softmax(m(x), 1) for m in bal.chains) / 3
    torch.testing.assert_close(bal.predict(x), expected)
    # the ensemble's output is log of that average, and its gradient is the average's
    xg = x.clone().requires_grad_(True)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    (g,) = torch.autograd.grad(F.cross_entropy(bal.ensemble(xg), y), xg)
    xw = x.clone().requires_grad_(True)
    avg = sum(F.softmax(m(xw), 1) for m in bal.chains) / 3
    (gw,) = torch.autograd.grad(F.nll_loss(avg.log(), y), xw)
    torch.testing.assert_close(g, gw)


def test_bal_step_is_the_gibbs_iteration_written_out():
    """Without noise (T = 0 in both samplers) and with V̂ frozen (τ = ∞), one iteration is: x̃ by
    gradient descent on the energy over the chains, then each chain's preconditioned step on
    N·CE(x̃) + λ/2‖θ‖²."""
    model = small_net()
    x = torch.rand(5, 1, 4, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1, 0])
    adv = SGLDAdversary(steps=4, step_size=0.05, alpha=0.5, temperature=0.0)
    bal = BAL(model, data_size=50, chains=2, adversary=adv, lr=0.05, tau=math.inf, temperature=0.0,
              prior_precision=0.1)  # fmt: skip
    with torch.no_grad():
        for p in bal.chains[1].parameters():
            p.mul_(1.1)
    for opt in bal.optimizers:  # V̂ = 1: the step is −η²·g itself, sensitive to every detail of x̃
        opt.param_groups[0]["v0"] = 1.0
    chains = [copy.deepcopy(m) for m in bal.chains]
    before = [p.detach().clone() for p in model.parameters()]
    assert bal.last is None
    loss = bal.step(x, y)
    xa = x.clone()
    for _ in range(4):
        xa.requires_grad_(True)
        u = sum(F.log_softmax(m(xa), 1)[torch.arange(5), y].sum() for m in chains) / 2 + 0.5 * (xa - x).square().sum()
        (g,) = torch.autograd.grad(u, xa)
        xa = (xa - 0.05 * g).detach().clamp(0, 1)
    ces = []
    for member, ref in zip(bal.chains, chains, strict=True):
        ce = F.cross_entropy(ref(xa), y)
        ces.append(ce.detach())
        energy = 50 * ce + 0.05 * sum(p.square().sum() for p in ref.parameters())
        grads = torch.autograd.grad(energy, list(ref.parameters()))
        for p, q, gq in zip(member.parameters(), ref.parameters(), grads, strict=True):
            torch.testing.assert_close(p.detach(), q.detach() - 0.05**2 * gq / math.sqrt(1 + 1e-8))
    torch.testing.assert_close(loss, torch.stack(ces).mean())
    for p, b in zip(model.parameters(), before, strict=True):  # the user's model is never changed
        assert torch.equal(p.detach(), b)
    # bal.last: what the step used, its figures counted by hand
    last = bal.last
    assert last.steps == 4
    torch.testing.assert_close(last.x_adv, xa)
    torch.testing.assert_close(last.metrics["loss"], loss)
    moved = (xa - x).flatten(1)
    torch.testing.assert_close(last["perturbation_l2"], moved.norm(dim=1).mean().item())
    torch.testing.assert_close(last["perturbation_linf"], moved.abs().amax(dim=1).mean().item())
    hits = [(ref(xa).argmax(1) == y).double().mean().item() for ref in chains]
    assert last["adv_acc"] == pytest.approx(sum(hits) / 2)
    assert last["perturbation_l2"] > 0


def test_bal_last_with_several_data_chains_and_without_an_adversary():
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    adv = SGLDAdversary(steps=3, step_size=0.5, chains=2, generator=torch.Generator().manual_seed(0))
    bal = BAL(small_net(), data_size=10, chains=2, adversary=adv, seed=0)
    bal.step(x, y)
    xa = bal.last.x_adv
    assert xa.shape == (6, 1, 4, 4)
    moved = (xa - torch.cat([x, x])).flatten(1)  # chain-major rows: each against its own clean image
    torch.testing.assert_close(bal.last["perturbation_l2"], moved.norm(dim=1).mean().item())
    torch.testing.assert_close(bal.last["perturbation_linf"], moved.abs().amax(dim=1).mean().item())
    assert not torch.equal(xa[:3], xa[3:])  # two chains, two draws
    bnn = BAL(small_net(), data_size=10, chains=2, adversary=SGLDAdversary(steps=0), seed=0)
    bnn.step(x, y)
    assert bnn.last.steps == 0 and torch.equal(bnn.last.x_adv, x)
    assert bnn.last["perturbation_l2"] == 0 and bnn.last["perturbation_linf"] == 0


def test_bal_chains_are_seeded_and_leave_the_users_model_alone():
    x, y = torch.rand(8, 1, 4, 4, dtype=torch.float64), torch.randint(0, 3, (8,))

    def run(seed):
        model = small_net()
        model.eval()
        snap = snapshot(model)
        adv = SGLDAdversary(steps=2, step_size=0.05, generator=torch.Generator().manual_seed(seed))
        bal = BAL(model, data_size=100, chains=2, adversary=adv, lr=0.05, temperature=1.0, friction=5.0, seed=seed)
        for _ in range(3):
            loss = bal.step(x, y)
        assert torch.isfinite(loss)
        assert_same(model, snap)
        return [p.detach().clone() for m in bal.chains for p in m.parameters()]

    a, b, c = run(1), run(1), run(2)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a, c, strict=True))


def test_bal_state_round_trips_and_bad_arguments_are_refused():
    def make(seed):
        adversary = SGLDAdversary(steps=2, generator=torch.Generator().manual_seed(7))
        return BAL(small_net(seed=seed), data_size=10, chains=2, seed=0, adversary=adversary)

    bal = make(0)
    x, y = torch.rand(4, 1, 4, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    bal.step(x, y)
    other = make(5)
    other.load_state_dict(bal.state_dict())
    torch.testing.assert_close(other.predict(x), bal.predict(x))
    # the generators are in the state: the next step draws the same noise (a resumed run continues exactly)
    bal.step(x, y), other.step(x, y)
    for p, q in zip(bal.ensemble.parameters(), other.ensemble.parameters(), strict=True):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="random generators"):
        BAL(small_net(), data_size=10, chains=2).load_state_dict(bal.state_dict())
    for kwargs, err, word in [
        ({"data_size": 0}, ValueError, "data_size"),
        ({"data_size": 10, "chains": 0}, ValueError, "chains"),
        ({"data_size": 10, "adversary": "pgd"}, TypeError, "adversary"),
        ({"data_size": 10, "theta_steps": 0}, ValueError, "theta_steps"),
        ({"data_size": 10, "prior_precision": -1.0}, ValueError, "prior_precision"),
        ({"data_size": 10, "lr": 0.0}, ValueError, "lr"),
    ]:
        with pytest.raises(err, match=word):
            BAL(small_net(), **kwargs)
    with pytest.raises(ValueError, match="class 5"):
        bal.step(x, torch.tensor([0, 1, 5, 0]))


def test_a_saved_posterior_ensemble_loads_back_as_it_was(tmp_path):
    from robustreg.checkpoint import load_model, posterior_ensemble, save_model
    from robustreg.models import BALCNN

    bal = BAL(BALCNN(), data_size=10, chains=3, seed=0)
    kwargs = {"member_arch": "bal_cnn", "member_kwargs": {}, "members": 3}
    save_model(bal.ensemble, tmp_path / "m", arch="posterior_ensemble", kwargs=kwargs, config={})
    loaded = load_model(tmp_path / "m")[0]
    x = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(loaded.eval()(x), bal.ensemble.eval()(x))
    with pytest.raises(ValueError, match="member_arch"):
        posterior_ensemble("resnet", {}, 2)
    with pytest.raises(ValueError, match="members"):
        posterior_ensemble("bal_cnn", {}, 0)


def test_bal_a_non_finite_gradient_changes_neither_weights_nor_sampler_state():
    bal = BAL(small_net(), data_size=10, chains=2, seed=0)
    x, y = torch.rand(4, 1, 4, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    bal.step(x, y)
    state = [o.state_dict()["state"][0]["v"].clone() for o in bal.optimizers]
    with torch.no_grad():
        bal.chains[1][1].weight[0, 0] = math.inf  # chain 1's forward, hence its gradient, goes non-finite
    inf_weights = [p.detach().clone() for p in bal.ensemble.parameters()]
    last = bal.last
    assert math.isnan(bal.step(x, y).item())
    assert bal.last is last  # the record of the last finite step
    for p, q in zip(bal.ensemble.parameters(), inf_weights, strict=True):
        assert torch.equal(p.detach(), q)  # chain 0 did not move either
    for o, v in zip(bal.optimizers, state, strict=True):
        assert torch.equal(o.state_dict()["state"][0]["v"], v)


def test_bal_a_non_finite_gradient_at_a_later_sgadald_step_undoes_the_iteration(monkeypatch):
    import robustreg.bayes.bal as bal_module

    bal = BAL(small_net(), data_size=10, chains=2, seed=0, theta_steps=2)
    x, y = torch.rand(4, 1, 4, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    bal.step(x, y)
    weights = [p.detach().clone() for p in bal.ensemble.parameters()]
    state = [o.state_dict()["state"][0]["v"].clone() for o in bal.optimizers]
    calls, real = [], bal_module.all_reduce_mean

    def poisoned(grads):  # chain 1's gradient at the second SGAdaLD step is NaN; the first step went through
        calls.append(1)
        return [g * math.nan for g in grads] if len(calls) == 4 else real(grads)

    monkeypatch.setattr(bal_module, "all_reduce_mean", poisoned)
    assert math.isnan(bal.step(x, y).item()) and len(calls) == 4
    for p, q in zip(bal.ensemble.parameters(), weights, strict=True):
        assert torch.equal(p.detach(), q)
    for o, v in zip(bal.optimizers, state, strict=True):
        assert torch.equal(o.state_dict()["state"][0]["v"], v)


def test_bal_refuses_a_damaged_generator_state_before_changing_anything():
    bal = BAL(small_net(), data_size=10, chains=2, seed=0, adversary=SGLDAdversary(generator=torch.Generator()))
    state = bal.state_dict()
    state["generators"][1] = state["generators"][1][:10]  # truncated
    other = BAL(small_net(seed=5), data_size=10, chains=2, seed=0, adversary=SGLDAdversary(generator=torch.Generator()))
    before = [p.detach().clone() for p in other.ensemble.parameters()]
    with pytest.raises(ValueError, match="random generator 1"):
        other.load_state_dict(state)
    for p, q in zip(other.ensemble.parameters(), before, strict=True):
        assert torch.equal(p.detach(), q)
