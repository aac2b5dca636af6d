"""Amata's schedules and their use by every engine (ATTA's own tests: test_atta.py)."""

import itertools
import math
import warnings

import pytest
import torch
from torch import nn

import robustreg
from robustreg import ATTA, PGDAT, TRADES, YOPO, Amata, AmataSchedule, FastAT, FreeAT, amata_schedule

from .conftest import CountingLinear, TinyConvBN, assert_same, linear_atta, snapshot

# -- schedules -------------------------------------------------------------------------------


@pytest.mark.parametrize(("k_min", "k_max", "tau"), [(10, 40, 0.4), (5, 40, 0.3), (2, 4, 8 / 255)])
def test_linear_schedule_matches_algorithm_1(k_min, k_max, tau):
    for p, k_real in [(0.0, k_min), (0.5, (k_min + k_max) / 2), (1.0, k_max)]:
        k, alpha = amata_schedule(p, k_min=k_min, k_max=k_max, tau=tau)
        assert k == math.floor(k_real + 0.5)
        assert alpha == pytest.approx(tau / k, rel=1e-15)


@pytest.mark.parametrize("eta", [0.5, 1.0, 3.0])
def test_exponential_schedule_matches_eq_16(eta):
    k_min, k_max, tau = 10, 40, 0.4
    for p in (0.0, 0.5, 1.0):
        k_real = k_min + (k_max - k_min) * (1 - math.exp(-eta * p)) / (1 - math.exp(-eta))
        k, alpha = amata_schedule(p, k_min=k_min, k_max=k_max, tau=tau, kind="exponential", eta=eta)
        assert k == math.floor(k_real + 0.5) and alpha == pytest.approx(tau / k)
    # Concave: ahead of the linear schedule in the middle of training.
    assert amata_schedule(0.5, k_min=10, k_max=40, tau=0.4, kind="exponential", eta=eta)[0] > 25


def test_paper_example_values():
    assert amata_schedule(0.0, k_min=10, k_max=40, tau=0.4) == (10, 0.04)
    assert amata_schedule(0.5, k_min=10, k_max=40, tau=0.4) == (25, pytest.approx(0.016))
    assert amata_schedule(1.0, k_min=10, k_max=40, tau=0.4) == (40, pytest.approx(0.01))
    assert amata_schedule(0.3, k_min=10, k_max=40, tau=0.4, kind="constant") == (40, pytest.approx(0.01))


@pytest.mark.parametrize("kind", ["linear", "exponential", "constant"])
def test_schedule_k_is_monotone_and_in_range(kind):
    ps = torch.linspace(0, 1, 1001).tolist()
    ks = [amata_schedule(p, k_min=3, k_max=17, tau=1.0, kind=kind, eta=2.0)[0] for p in ps]
    assert all(a <= b for a, b in itertools.pairwise(ks))
    assert min(ks) >= 3 and max(ks) == 17


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"progress": 1.5}, ValueError, r"progress must be a number in \[0, 1\]"),
        ({"progress": -0.1}, ValueError, r"progress must be a number in \[0, 1\]"),
        ({"progress": math.nan}, ValueError, "progress"),
        ({"k_min": 41}, ValueError, "k_min must be <= k_max"),
        ({"k_min": 0}, ValueError, "k_min must be an int >= 1"),
        ({"k_max": 2.5}, TypeError, "k_max must be an int"),
        ({"tau": 0.0}, ValueError, "tau must be a finite number > 0"),
        ({"tau": -1.0}, ValueError, "tau must be a finite number >= 0"),
        ({"kind": "cosine"}, ValueError, "kind must be one of"),
        ({"kind": "exponential", "eta": 0.0}, ValueError, "eta must be a finite number > 0"),
    ],
)
def test_bad_schedule_arguments(kwargs, exc, match):
    args = {"progress": 0.5, "k_min": 10, "k_max": 40, "tau": 0.4} | kwargs
    with pytest.raises(exc, match=match):
        amata_schedule(args.pop("progress"), **args)
    if "progress" not in kwargs:
        with pytest.raises(exc, match=match):
            AmataSchedule(args["k_min"], args["k_max"], args["tau"], args.get("kind", "linear"), args.get("eta", 1.0))


# -- Amata on the engines --------------------------------------------------------------------


def test_amata_pgd_takes_k_t_steps_of_alpha_t():
    model = CountingLinear()
    x, y = torch.randn(8, 5), torch.randint(0, 2, (8,))
    eps, tau = 10.0, 0.6  # a ball too large to bind: δ is the sum of the K steps
    reg = Amata(PGDAT(model, eps=eps, random_start=False, bounds=None), k_min=3, k_max=12, tau=tau, total=10)
    w = model.fc.weight.detach()
    direction = torch.sign(w[1 - y] - w[y])  # sign of ∇_x CE for two classes
    reg(x, y)  # the first call also probes the number of classes
    for epoch in (0, 5, 9):
        reg.set_epoch(epoch)
        k, alpha = amata_schedule(epoch / 10, k_min=3, k_max=12, tau=tau)
        model.calls = 0
        reg(x, y)
        assert model.calls == k + 1  # K attack passes + the loss's own
        assert reg.engine.steps == k and reg.engine.alpha == alpha
        torch.testing.assert_close(reg.last.x_adv - x, k * alpha * direction)
        assert reg.last["K"] == k and reg.last["alpha"] == pytest.approx(alpha)


def test_amata_sets_the_knobs_of_each_engine():
    model = TinyConvBN()
    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, 5, (4,))
    sched = AmataSchedule(2, 4, 0.2)

    yopo = Amata(YOPO(model, m=9, n=2, eps=0.1), sched, total=4)
    yopo.set_epoch(2)
    yopo(x, y)
    assert (yopo.engine.m, yopo.engine.n, yopo.engine.alpha) == (3, 2, pytest.approx(0.2 / 3))

    trades = Amata(TRADES(model, eps=0.1), sched, total=4)
    trades.set_epoch(4)
    trades(x, y)
    assert (trades.engine.steps, trades.engine.alpha) == (4, pytest.approx(0.05))

    free = Amata(FreeAT(model, eps=0.1), sched, total=4)
    free.set_epoch(0)
    assert free.replays == 2
    free(x, y).backward()
    assert free.engine.alpha == pytest.approx(0.1)
    free.set_epoch(4)
    assert free.replays == 4 and len(list(robustreg.replay([(x, y)], free.replays))) == 4
    with pytest.raises(TypeError, match="replays is Free-AT's knob"):
        _ = trades.replays


class SignedSteps(PGDAT):
    """An engine Amata has never heard of: its K is called ``rounds``, and it has a start ``init``."""

    annealed_k = "rounds"
    early_knob = "init"

    def __init__(self, model, **kw):
        self.rounds, self.init = 1, None
        super().__init__(model, **kw)

    def _loss(self, x, y):
        self.steps = self.rounds
        return super()._loss(x, y)


def test_amata_drives_an_engine_by_what_it_declares_not_by_its_class():
    model = TinyConvBN()
    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, 5, (4,))
    engine = SignedSteps(model, eps=0.1)
    reg = Amata(engine, AmataSchedule(2, 6, 0.3), total=10, early=0.3, early_init=0.25)
    reg.set_epoch(0)
    reg(x, y)
    # K went to `rounds`, α to `alpha`, and the early knob held Amata's early value while
    # p < early, then the engine's own value again
    assert (engine.rounds, engine.steps, engine.alpha, engine.init) == (2, 2, pytest.approx(0.15), 0.25)
    reg.set_epoch(5)
    reg(x, y)
    assert (engine.rounds, engine.steps, engine.alpha, engine.init) == (4, 4, pytest.approx(0.075), None)

    class OtherKnob(SignedSteps):
        early_knob = "warmup"

    with pytest.raises(ValueError, match="early knob 'warmup'"):
        Amata(OtherKnob(model, eps=0.1), AmataSchedule(2, 6, 0.3), total=10)


def test_amata_fast_uses_a_fixed_start_early_then_the_random_one():
    model = CountingLinear()
    x, y = torch.full((6, 5), 0.5), torch.randint(0, 2, (6,))
    fast = FastAT(model, eps=0.2, alpha=0.0)  # α = 0: x_adv shows the start itself
    reg = Amata(fast, total=10, early=0.3, early_init=0.5)
    reg.set_epoch(2)
    reg(x, y)
    torch.testing.assert_close(reg.last.x_adv - x, torch.full_like(x, 0.1))  # δ_0 = c·ε·𝟙
    assert fast.init == 0.5 and reg.K is None
    reg.set_epoch(3)
    reg(x, y)
    assert fast.init is None
    delta = reg.last.x_adv - x
    assert float(delta.abs().max()) <= 0.2 and delta.unique().numel() > 10  # uniform start again


def test_amata_fast_refuses_a_k_schedule():
    with pytest.raises(ValueError, match="FastAT takes one step"):
        Amata(FastAT(CountingLinear()), k_min=1, k_max=2, tau=0.1)


def test_fast_init_for_l2_is_a_constant_vector_of_norm_c_eps():
    fast = FastAT(CountingLinear(), eps=0.4, alpha=0.0, norm="l2", init=0.5)
    x = torch.full((3, 5), 0.5)
    fast(x, torch.zeros(3, dtype=torch.long))
    delta = fast.last.x_adv - x
    torch.testing.assert_close(delta.norm(dim=1), torch.full((3,), 0.2))
    assert delta.unique().numel() == 1


def test_progress_by_epoch_iteration_or_value_and_checkpointing():
    reg = Amata(PGDAT(TinyConvBN()), k_min=1, k_max=11, tau=1.0, total=10)
    reg.set_epoch(3)
    assert reg.progress == pytest.approx(0.3) and reg.K == 4
    for _ in range(4):
        reg.step()
    assert reg.t == 7 and reg.K == 8
    state = reg.state_dict()
    other = Amata(PGDAT(TinyConvBN()), k_min=1, k_max=11, tau=1.0, total=10)
    other.load_state_dict(state)
    assert other.K == 8
    reg.set_epoch(25)
    assert reg.progress == 1.0 and reg.K == 11
    reg.set_progress(0.5)
    assert reg.knobs() == (6, pytest.approx(1 / 6)) and reg.knobs(0.0) == (1, 1.0)


def test_user_supplied_schedule_and_its_checks():
    reg = Amata(PGDAT(TinyConvBN(), eps=0.1), lambda p: (1 + int(4 * p), 0.02), total=4)
    reg.set_epoch(2)
    assert reg.knobs() == (3, 0.02)
    bad = Amata(PGDAT(TinyConvBN(), eps=0.1), lambda p: (0, 0.02))
    with pytest.raises(ValueError, match="K must be an int >= 1"):
        bad(torch.rand(2, 1, 8, 8), torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({}, ValueError, "pass schedule=, or k_min=, k_max= and tau="),
        ({"schedule": 3}, TypeError, "schedule must be callable"),
        ({"k_min": 5, "k_max": 2, "tau": 1.0}, ValueError, "k_min must be <= k_max"),
        ({"k_min": 1, "k_max": 2, "tau": 1.0, "total": 0}, ValueError, "total must be an int >= 1"),
        ({"k_min": 1, "k_max": 2, "tau": 1.0, "early": 2.0}, ValueError, r"early must be in \[0, 1\]"),
    ],
)
def test_bad_amata_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        Amata(PGDAT(TinyConvBN()), **kwargs)


def test_amata_needs_an_engine_and_total_for_epochs():
    with pytest.raises(TypeError, match="engine must be a robustreg adversarial loss"):
        Amata(nn.Linear(2, 2), k_min=1, k_max=2, tau=1.0)
    reg = Amata(PGDAT(TinyConvBN()), k_min=1, k_max=2, tau=1.0)
    with pytest.raises(ValueError, match="total is None"):
        reg.set_epoch(1)
    with pytest.raises(ValueError, match="progress must be"):
        reg.set_progress(2)


def test_amata_call_is_side_effect_free():
    model = TinyConvBN().eval()  # so the loss's own pass leaves the running statistics too
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    snap = snapshot(model)
    reg = Amata(PGDAT(model, eps=0.1), k_min=1, k_max=3, tau=0.1, total=2)
    reg(torch.rand(4, 1, 8, 8), torch.randint(0, 5, (4,)))
    assert_same(model, snap)  # modes, .grad, requires_grad, running statistics
    assert reg.last["K"] == 1


def test_amata_checks_the_batch_before_setting_any_knob():
    model = TinyConvBN().train()
    snap = snapshot(model)
    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, 5, (4,))
    nan = x.clone()
    nan[0, 0, 0, 0] = math.nan
    engines = [PGDAT(model, eps=0.1, steps=7, alpha=0.05), ATTA(model, 8, eps=0.1, steps=7, alpha=0.05, reset_every=5)]
    for engine in engines:
        reg = Amata(engine, k_min=1, k_max=3, tau=0.1, total=10)
        reg.set_progress(0.5)  # knobs (2, 0.05) and ATTA's early reset period would differ from the engine's
        knobs = {k: getattr(engine, k) for k in ("steps", "alpha", "reset_every") if hasattr(engine, k)}
        args = (torch.arange(4),) if isinstance(engine, ATTA) else ()
        for batch, exc, match in [
            ((nan, y, *args), ValueError, "x contains NaN or inf"),
            ((x, torch.full_like(y, 5), *args), ValueError, "y holds class 5"),
            ((x.double().long(), y, *args), TypeError, "x must be a floating-point tensor"),
            ((x, y, torch.arange(4), torch.arange(4)), TypeError, "called with"),  # (x, y[, index]) for all
        ]:
            with pytest.raises(exc, match=match):
                reg(*batch)
            assert {k: getattr(engine, k) for k in knobs} == knobs
            assert engine.last is None and reg.last is None
            assert_same(model, snap)
        if isinstance(engine, ATTA):
            with pytest.raises(ValueError, match="index holds values in"):
                reg(x, y, torch.arange(4) + 6)
            assert engine.memory is None and {k: getattr(engine, k) for k in knobs} == knobs


def _stall_setup(stalled_after: int | None = 3, **kw) -> tuple[Amata, torch.Tensor, torch.Tensor]:
    model = CountingLinear().train()
    reg = Amata(
        PGDAT(model, eps=0.1, bounds=None), k_min=1, k_max=2, tau=0.1, total=4, stalled_after=stalled_after, **kw
    )
    return reg, torch.randn(4, 5), torch.randint(0, 2, (4,))


def _stall_warnings(record) -> list:
    return [w for w in record if issubclass(w.category, UserWarning) and "clock was never set" in str(w.message)]


def test_amata_warns_once_when_its_clock_is_never_set():
    reg, x, y = _stall_setup(stalled_after=3)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        reg(x, y)
        reg(x, y)
        assert not _stall_warnings(record)  # not before the third training call
        reg(x, y)
        assert len(_stall_warnings(record)) == 1
        for _ in range(4):
            reg(x, y)
        assert len(_stall_warnings(record)) == 1  # once per object
    msg = str(_stall_warnings(record)[0].message)
    assert "called 3 times in training mode" in msg and "progress stays at 0 and K at 1" in msg
    assert "reg.set_epoch(epoch)" in msg and "reg.step()" in msg and "stalled_after=None" in msg
    assert _stall_warnings(record)[0].filename == __file__  # points at the user's call


@pytest.mark.parametrize("drive", ["step after", "step before", "set_epoch before", "set_progress", "load_state_dict"])
def test_amata_never_warns_a_loop_that_drives_its_clock(drive):
    reg, x, y = _stall_setup(stalled_after=2)  # the smallest threshold allowed
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        if drive == "load_state_dict":
            reg.load_state_dict({"t": 0, "progress": 0.0})
        for epoch in range(3):
            if drive == "set_epoch before":
                reg.set_epoch(epoch)
            for _ in range(5):  # epochs longer than stalled_after
                if drive == "step before":
                    reg.step()
                if drive == "set_progress":
                    reg.set_progress(0.0)
                reg(x, y)
                if drive == "step after":
                    reg.step()


def test_amata_counts_only_accepted_training_calls():
    reg, x, y = _stall_setup(stalled_after=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reg.model.eval()
        for _ in range(5):  # validation passes do not count
            reg(x, y)
        reg.model.train()
        for _ in range(3):  # refused calls do not count
            with pytest.raises(ValueError, match="y holds class 2"):
                reg(x, torch.full_like(y, 2))
        reg(x, y)
    with pytest.warns(UserWarning, match="clock was never set"):
        reg(x, y)
    quiet, x, y = _stall_setup(stalled_after=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(5):
            quiet(x, y)


def test_stalled_after_default_and_checks():
    reg, _, _ = _stall_setup()
    assert Amata(reg.engine, k_min=1, k_max=2, tau=0.1).stalled_after == 2000
    for bad, exc in [(1, ValueError), (0, ValueError), (2.5, TypeError), (True, TypeError)]:
        with pytest.raises(exc, match="stalled_after"):
            Amata(reg.engine, k_min=1, k_max=2, tau=0.1, stalled_after=bad)


def test_a_refused_clock_change_changes_nothing():
    reg = Amata(PGDAT(CountingLinear()), k_min=1, k_max=2, tau=0.1)
    with pytest.raises(ValueError, match="total is None"):
        reg.step()
    assert reg.t == 0 and reg.progress == 0.0
    engine = ATTA(CountingLinear(), 4, reset_every=3)
    failing = Amata(engine, lambda p: (0, 0.1) if p > 0.5 else (1, 0.1), total=4)  # K = 0 late in training
    failing.set_epoch(1)
    with pytest.raises(ValueError, match="K must be an int >= 1"):
        failing.set_epoch(3)
    assert (failing.t, failing.progress, engine.epoch) == (1, 0.25, 1)
    for state, exc, match in [
        ({"t": "3", "progress": 0.5}, TypeError, r"state\['t'\] must be an int"),
        ({"t": 3, "progress": 1.5}, ValueError, "progress must be"),
    ]:
        with pytest.raises(exc, match=match):
            failing.load_state_dict(state)
        assert (failing.t, failing.progress) == (1, 0.25)


def test_amata_atta_resets_every_2_epochs_early_then_as_configured():
    reg, _ = linear_atta(reset_every=None)
    amata = Amata(reg, k_min=1, k_max=2, tau=0.2, total=10, early=0.4, early_reset=2)
    x, y, index = torch.randn(3, 5), torch.randint(0, 2, (3,)), torch.tensor([0, 1, 2])
    carried = []
    for epoch in range(8):
        amata.set_epoch(epoch)
        amata(x, y, index)
        carried.append(reg.last["carried"])
    assert carried == [0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert reg.reset_every is None and reg.steps == 2
