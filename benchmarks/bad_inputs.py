"""Bad inputs against every public object: a clear error, or acceptance where the docs allow it,
and no side effect either way.

Each case builds a tiny model (CPU, milliseconds), hands one public object one bad input (or
one input the documentation says is valid) and checks two things:

1. **the outcome**: a ``TypeError``/``ValueError`` of the case's type whose message names the
   offending argument (as a word: ``x``, ``y``, ``logits``, ``model``, ``eps``, …), or, for an
   ``accept`` case, no error at all and a finite loss when the call returns a 0-dim tensor; for
   a valid input from which the loss computes a non-finite value (a diverged model whose logits
   are NaN, NaN in ``logits=``), no error and a non-finite loss: the value is shown, not hidden;
2. **no side effect**: the model's parameters (the same ``nn.Parameter`` objects, bit for bit,
   aliases included), buffers (BatchNorm running statistics), ``.grad``, ``requires_grad``,
   every module's ``training`` flag and norm layers' ``track_running_stats`` are unchanged, and
   for a refused call so is the object's own state (an engine's knobs, its cached class count,
   ATTA's stored perturbations, Free-AT's δ, ``reg.last``, Amata's progress). Models start in
   train mode with BatchNorm and every ``.grad`` set, so that any forward, backward or mode
   change would show; ``accept`` cases run in eval mode with eval-mode inner passes, so that
   valid calls too must leave the model as it was (MSA, which is an optimiser, may change
   parameters and running statistics on an accepted step, and nothing else).

The cases are distinct: wrong types, shapes and dtypes, NaN and inf, empty batches, labels out of
range, negative or float labels, integers where a bool flag is expected, bad hyper-parameters
(``eps < 0``, ``steps = -1``, ``alpha = nan``, ``norm = "l3"``, reversed ``bounds``, …), a model
returning ``(B,)`` or a tuple, ``logits=`` of the wrong type or shape, chart outputs of the
wrong shape or non-finite, a float64 model fed float32 ``x`` (and its autocast counterpart, a
bfloat16 model under ``torch.autocast``, accepted), and labels passed to a label-free loss;
across the engines (PGDAT, FastAT, FreeAT, TRADES, YOPO, ATTA),
Amata, VAT, TNAR, EntMin, MSA, the evaluation attacks (PGD, FGSM, CW, AutoAttack), and
``robust_accuracy`` / ``gradient_masking_report``.

Run from the repository root (after ``pip install -e .``; otherwise prefix ``PYTHONPATH=.``)::

    python benchmarks/bad_inputs.py            # the table and the totals; exit status 1 on any failure
    python benchmarks/bad_inputs.py --failures # only the failing cases
    python benchmarks/bad_inputs.py --out bad_inputs.json  # also every outcome as JSON, written as it goes

A progress bar over the cases (with an ETA) shows on stderr while they run.

``tests/test_bad_inputs.py`` runs every case as its own test.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn

import robustreg
from robustreg import cli
from robustreg.autoattack import available as autoattack_available
from robustreg.charts import LinearChart
from robustreg.control import MSA

from reporting import progress_bar, write_json

CLASSES = 3


# -- tiny models ---------------------------------------------------------------------------------


class ConvNet(nn.Module):
    """``(B, 1, 8, 8) -> (B, 3)`` with BatchNorm; ``out="flat"`` returns ``(B,)``, ``"tuple"`` a pair,
    ``"nan"`` NaN logits (a NaN bias)."""

    def __init__(self, out: str = "logits") -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 8 * 8, 1 if out == "flat" else CLASSES)
        self.out = out
        if out == "nan":  # a model that has diverged: NaN logits from finite inputs
            with torch.no_grad():
                self.fc.bias[1] = math.nan

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        h = torch.relu(self.bn(self.conv(x))).flatten(1)
        logits = self.fc(h)
        if self.out == "flat":
            return logits.flatten()
        if self.out == "tuple":
            return logits, h
        return logits


class MLP(nn.Module):
    """``(B, 5) -> (B, 3)`` with BatchNorm; ``out`` as :class:`ConvNet`."""

    def __init__(self, out: str = "logits") -> None:
        super().__init__()
        self.fc1, self.bn, self.fc2 = nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Linear(8, 1 if out == "flat" else CLASSES)
        self.out = out
        if out == "nan":
            with torch.no_grad():
                self.fc2.bias[1] = math.nan

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        logits = self.fc2(torch.tanh(self.bn(self.fc1(x))))
        if self.out == "flat":
            return logits.flatten()
        return (logits, x) if self.out == "tuple" else logits


def _prepared(model: nn.Module, accept: bool, dtype: torch.dtype | None = None) -> nn.Module:
    torch.manual_seed(0)
    if dtype is not None:
        model = model.to(dtype)
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    return model.eval() if accept else model.train()


def images(n: int = 4) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, CLASSES, (n,), generator=g)


def features(n: int = 4) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(2)
    return torch.randn(n, 5, generator=g), torch.randint(0, CLASSES, (n,), generator=g)


def chart() -> LinearChart:
    g = torch.Generator().manual_seed(3)
    return LinearChart(torch.randn(5, 2, generator=g), torch.randn(5, generator=g))


def with_nan(t: Tensor, value: float = math.nan) -> Tensor:
    t = t.clone()
    t.view(-1)[1] = value
    return t


# -- cases ---------------------------------------------------------------------------------------


@dataclass
class Setup:
    """What a case runs: ``call()`` and the models and objects whose state must not change."""

    call: Callable[[], object]
    models: list[nn.Module]
    objects: list[object] = field(default_factory=list)
    mutates: bool = False  # an accepted call may change parameters and buffers (MSA's step)


@dataclass(frozen=True)
class Case:
    """One bad (or documented-valid) input to one public object.

    ``expect`` is ``TypeError`` or ``ValueError`` with ``arg`` the word the message must contain,
    or ``None`` for an input the documentation accepts; ``nonfinite`` marks a valid input from
    which the loss computes a non-finite value (a diverged model), which must show in the returned
    loss, not be hidden. ``build(accept)`` makes a fresh :class:`Setup` (models in eval mode when
    ``accept``)."""

    target: str
    what: str
    build: Callable[[bool], Setup]
    expect: type[Exception] | None = ValueError
    arg: str = ""
    nonfinite: bool = False  # accepted, and the returned loss must show the non-finite value

    @property
    def id(self) -> str:
        return f"{self.target}: {self.what}"


@dataclass(frozen=True)
class Outcome:
    case: Case
    ok: bool
    result: str  # "error", "accepted" or what went wrong
    detail: str
    side_effects: tuple[str, ...] = ()


ENGINES: dict[str, Callable[..., robustreg.AdversarialLoss]] = {
    "PGDAT": lambda net, **kw: robustreg.PGDAT(net, **{"eps": 0.1, "alpha": 0.05, "steps": 2} | kw),
    "FastAT": lambda net, **kw: robustreg.FastAT(net, **{"eps": 0.1} | kw),
    "FreeAT": lambda net, **kw: robustreg.FreeAT(net, **{"eps": 0.1} | kw),
    "TRADES": lambda net, **kw: robustreg.TRADES(net, **{"eps": 0.1, "alpha": 0.05, "steps": 2} | kw),
    "YOPO": lambda net, **kw: robustreg.YOPO(net, **{"m": 2, "n": 2, "eps": 0.1, "alpha": 0.05} | kw),
    "ATTA": lambda net, **kw: robustreg.ATTA(net, 16, **{"eps": 0.1, "alpha": 0.05, "steps": 2} | kw),
}
HAS_BN = ("PGDAT", "FastAT", "TRADES", "YOPO", "ATTA")  # engines with a bn= policy


def shows(case: Case) -> Case:
    """``case`` as a valid input whose non-finite result must show in the returned loss."""
    return replace(case, nonfinite=True)


def _engine_call(name: str, reg: object, x: object, y: object, index: object = None, autocast: bool = False) -> object:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        if name == "ATTA":
            return reg(x, y, torch.arange(4) if index is None else index)
        return reg(x, y)


def engine_case(
    name: str,
    what: str,
    expect: type[Exception] | None,
    arg: str,
    *,
    x: Callable[[], object] | None = None,
    y: Callable[[], object] | None = None,
    index: Callable[[], object] | None = None,
    kwargs: dict[str, object] | None = None,
    after: dict[str, object] | None = None,
    model: str = "logits",
    dtype: torch.dtype | None = None,
    autocast: bool = False,
) -> Case:
    """A call ``reg(x, y)`` (ATTA: ``reg(x, y, index)``) of engine ``name``; ``kwargs`` go to the
    constructor (whose failure is the case's error when they are bad), ``after`` are set as
    attributes after construction (checked again at the call); ``dtype`` converts the model,
    ``autocast`` runs the call under CPU bfloat16 autocast."""

    def build(accept: bool) -> Setup:
        net = _prepared(ConvNet(model), accept, dtype)
        extra = dict(kwargs or {})
        if accept and name in HAS_BN:
            extra.setdefault("bn", "eval")
        xb, yb = images()
        holder: dict[str, object] = {}

        def call() -> object:
            reg = ENGINES[name](net, **extra)  # a bad hyper-parameter fails here, before any call
            holder["reg"] = reg
            for k, v in (after or {}).items():
                setattr(reg, k, v)
            return _engine_call(name, reg, x() if x else xb, y() if y else yb, index() if index else None, autocast)

        # A refused call must leave the engine's own state as it was: built up front when the
        # constructor is fine, so that the state is compared before and after the call.
        setup = Setup(call, [net])
        if not kwargs or accept:
            reg = ENGINES[name](net, **extra)
            for k, v in (after or {}).items():
                setattr(reg, k, v)
            setup = Setup(
                lambda: _engine_call(
                    name, reg, x() if x else xb, y() if y else yb, index() if index else None, autocast
                ),
                [net],
                [reg],
            )
        return setup

    return Case(name, what, build, expect, arg)


def engine_cases() -> list[Case]:
    out: list[Case] = []
    xs, ys = images()
    bad_x = [
        ("x of dtype uint8", lambda: (xs * 255).to(torch.uint8), TypeError),
        ("x with a NaN", lambda: with_nan(xs), ValueError),
        ("x with an inf", lambda: with_nan(xs, math.inf), ValueError),
        ("x an empty batch", lambda: xs[:0], ValueError),
        ("x a NumPy array", lambda: xs.numpy(), TypeError),
        ("x without a batch dimension", lambda: xs[0, 0, 0], ValueError),
        ("x outside bounds (0, 1)", lambda: xs + 1.5, ValueError),
    ]
    bad_y = [
        ("y float labels", lambda: ys.float(), TypeError),
        ("y a label >= the number of classes", lambda: torch.tensor([0, 1, CLASSES, 2]), ValueError),
        ("y a negative label", lambda: torch.tensor([0, -1, 1, 2]), ValueError),
        ("y of the wrong length", lambda: ys[:3], ValueError),
        ("y bool labels", lambda: ys > 0, TypeError),
        ("y a list", lambda: ys.tolist(), TypeError),
    ]
    for name in ENGINES:
        for what, make, exc in bad_x:
            out.append(engine_case(name, what, exc, "x", x=make))
        for what, make, exc in bad_y:
            out.append(engine_case(name, what, exc, "y", y=make))
        hyper = [
            ("eps < 0", {"eps": -0.1}, ValueError, "eps"),
            ("eps NaN", {"eps": math.nan}, ValueError, "eps"),
            ("eps a string", {"eps": "0.1"}, TypeError, "eps"),
            ("alpha NaN", {"alpha": math.nan}, ValueError, "alpha"),
            ('norm="l3"', {"norm": "l3"}, ValueError, "norm"),
            ("random_start=1 (not a bool)", {"random_start": 1}, TypeError, "random_start"),
            ("bounds reversed (1, 0)", {"bounds": (1.0, 0.0)}, ValueError, "bounds"),
            ("bounds (0, inf)", {"bounds": (0.0, math.inf)}, ValueError, "bounds"),
        ]
        if name in HAS_BN:
            hyper.append(('bn="none"', {"bn": "none"}, ValueError, "bn"))
        if name in ("PGDAT", "TRADES", "ATTA"):
            hyper += [
                ("steps = -1", {"steps": -1}, ValueError, "steps"),
                ("steps = 2.5", {"steps": 2.5}, TypeError, "steps"),
            ]
        if name == "YOPO":
            hyper += [("m = 0", {"m": 0}, ValueError, "m"), ("n = -1", {"n": -1}, ValueError, "n")]
        for what, kwargs, exc, arg in hyper:
            out.append(engine_case(name, what, exc, arg, kwargs=kwargs))
        out += [
            engine_case(name, 'eps set to "0.1" after construction', TypeError, "eps", after={"eps": "0.1"}),
            engine_case(name, "model returns (B,)", ValueError, "model", model="flat"),
            engine_case(name, "model returns a tuple", ValueError, "model", model="tuple"),
            Case(name, "model is a function", _constructor(partial(ENGINES[name], lambda t: t)), TypeError, "model"),
            # documented as valid
            engine_case(name, "int32 labels", None, "", y=lambda: ys.int()),
            engine_case(name, "uint8 labels", None, "", y=lambda: ys.to(torch.uint8)),
            engine_case(name, "eps = 0", None, "", kwargs={"eps": 0.0}),
            engine_case(name, "bounds=None, x outside [0, 1]", None, "", x=lambda: 3 * xs - 1, kwargs={"bounds": None}),
            shows(engine_case(name, "a diverged model (NaN logits)", None, "", model="nan")),
            engine_case(name, "a float64 model, float32 x", TypeError, "x", dtype=torch.float64),
            engine_case(
                name, "a bfloat16 model, float32 x, under autocast", None, "", dtype=torch.bfloat16, autocast=True
            ),
        ]
    out += [
        engine_case("ATTA", "index out of range", ValueError, "index", index=lambda: torch.arange(4) + 14),
        engine_case("ATTA", "index with a duplicate", ValueError, "index", index=lambda: torch.tensor([0, 1, 1, 2])),
        engine_case("ATTA", "index float", TypeError, "index", index=lambda: torch.arange(4.0)),
        engine_case("ATTA", "index of the wrong length", ValueError, "index", index=lambda: torch.arange(3)),
        engine_case("PGDAT", "clean_weight = 2", ValueError, "clean_weight", kwargs={"clean_weight": 2.0}),
        engine_case("TRADES", "beta = inf", ValueError, "beta", kwargs={"beta": math.inf}),
        engine_case("FastAT", "init = 1.5", ValueError, "init", kwargs={"init": 1.5}),
        engine_case("PGDAT", "steps = 0", None, "", kwargs={"steps": 0}),
        engine_case("FastAT", "alpha=None (1.25·eps)", None, "", kwargs={"alpha": None}),
        engine_case("PGDAT", "x requires grad (embeddings)", None, "", x=lambda: xs.clone().requires_grad_(True)),
    ]
    out.append(
        Case("ATTA", "dataset_size = 0", _constructor(lambda: robustreg.ATTA(ConvNet(), 0)), ValueError, "dataset_size")
    )
    return out


def _constructor(make: Callable[[], object]) -> Callable[[bool], Setup]:
    """A case whose error comes from a constructor (the model it is given must not change)."""

    def build(accept: bool) -> Setup:
        net = _prepared(ConvNet(), accept)
        return Setup(lambda: make(), [net])

    return build


def amata_cases() -> list[Case]:
    xs, ys = images()

    def case(
        what: str,
        expect: type[Exception] | None,
        arg: str,
        act: Callable[[robustreg.Amata, nn.Module], object],
        engine: str = "PGDAT",
        dtype: torch.dtype | None = None,
        **kw: object,
    ) -> Case:
        def build(accept: bool) -> Setup:
            net = _prepared(ConvNet(), accept, dtype)
            eng = ENGINES[engine](net, bn="eval") if accept else ENGINES[engine](net)
            reg = robustreg.Amata(eng, **({"k_min": 1, "k_max": 5, "tau": 0.3, "total": 4} | kw))
            reg.set_progress(0.5)  # K = 3, alpha = 0.1, not the engine's 2 and 0.05: a knob set too early shows
            return Setup(lambda: act(reg, net), [net], [reg])

        return Case("Amata", what, build, expect, arg)

    return [
        case("x with a NaN", ValueError, "x", lambda r, m: r(with_nan(xs), ys)),
        case("y a label >= the number of classes", ValueError, "y", lambda r, m: r(xs, torch.full_like(ys, CLASSES))),
        case("x of dtype int64 (ATTA engine)", TypeError, "x", lambda r, m: r(xs.long(), ys, torch.arange(4)), "ATTA"),
        case(
            "index out of range (ATTA engine)",
            ValueError,
            "index",
            lambda r, m: r(xs, ys, torch.arange(4) + 20),
            "ATTA",
        ),
        case("(x, y) for ATTA (index missing)", TypeError, "index", lambda r, m: r(xs, ys), "ATTA"),
        case("set_progress(2)", ValueError, "progress", lambda r, m: r.set_progress(2)),
        case('set_progress("half")', TypeError, "progress", lambda r, m: r.set_progress("half")),
        case("set_epoch(-1)", ValueError, "epoch", lambda r, m: r.set_epoch(-1)),
        case("schedule returning K = 0", ValueError, "K", lambda r, m: r(xs, ys), schedule=lambda p: (0, 0.1)),
        case("schedule returning one number", TypeError, "schedule", lambda r, m: r(xs, ys), schedule=lambda p: 3),
        case(
            "schedule returning alpha = nan",
            ValueError,
            "alpha",
            lambda r, m: r(xs, ys),
            schedule=lambda p: (2, math.nan),
        ),
        Case(
            "Amata",
            "engine a model",
            _constructor(lambda: robustreg.Amata(ConvNet(), k_min=1, k_max=2, tau=0.1)),
            TypeError,
            "engine",
        ),
        Case(
            "Amata",
            "total = 0",
            _constructor(lambda: robustreg.Amata(ENGINES["PGDAT"](ConvNet()), k_min=1, k_max=2, tau=0.1, total=0)),
            ValueError,
            "total",
        ),
        Case(
            "Amata",
            "k_min > k_max",
            _constructor(lambda: robustreg.Amata(ENGINES["PGDAT"](ConvNet()), k_min=3, k_max=2, tau=0.1)),
            ValueError,
            "k_min",
        ),
        case("a float64 model, float32 x", TypeError, "x", lambda r, m: r(xs, ys), dtype=torch.float64),
        case("set_epoch without total", ValueError, "total", lambda r, m: r.set_epoch(1), total=None),
        case("step without total", ValueError, "total", lambda r, m: r.step(), total=None),
        case(
            "set_epoch to where the schedule returns K = 0",
            ValueError,
            "K",
            lambda r, m: r.set_epoch(4),
            schedule=lambda p: (0, 0.1) if p > 0.6 else (2, 0.1),
        ),
        case(
            "load_state_dict with t a string",
            TypeError,
            "t",
            lambda r, m: r.load_state_dict({"t": "3", "progress": 0.5}),
        ),
        Case(
            "Amata",
            "stalled_after = 1",
            _constructor(
                lambda: robustreg.Amata(ENGINES["PGDAT"](ConvNet()), k_min=1, k_max=2, tau=0.1, stalled_after=1)
            ),
            ValueError,
            "stalled_after",
        ),
        case("a valid call at progress 0.5", None, "", lambda r, m: r(xs, ys)),
    ]


def ssl_cases() -> list[Case]:
    xs, ys = features()

    def vat(
        what: str,
        expect: type[Exception] | None,
        arg: str,
        *,
        x: Callable[[], object] | None = None,
        kwargs: dict[str, object] | None = None,
        model: str = "logits",
        dtype: torch.dtype | None = None,
        args: Callable[[], tuple[object, ...]] = tuple,
        **call_kw: Callable[[], object],
    ) -> Case:
        def build(accept: bool) -> Setup:
            net = _prepared(MLP(model), accept, dtype)
            extra = {"eps": 0.5} | (kwargs or {})
            if kwargs and not accept:
                return Setup(lambda: robustreg.VAT(net, **extra), [net])
            reg = robustreg.VAT(net, **extra)
            return Setup(lambda: reg(x() if x else xs, *args(), **{k: v() for k, v in call_kw.items()}), [net], [reg])

        return Case("VAT", what, build, expect, arg)

    def tnar(
        what: str,
        expect: type[Exception] | None,
        arg: str,
        *,
        x: Callable[[], object] | None = None,
        kwargs: dict[str, object] | None = None,
        model: str = "logits",
        encode: Callable | None = None,
        decode: Callable | None = None,
        dtype: torch.dtype | None = None,
        args: Callable[[], tuple[object, ...]] = tuple,
        **call_kw: Callable[[], object],
    ) -> Case:
        def build(accept: bool) -> Setup:
            net = _prepared(MLP(model), accept, dtype)
            extra = {"eps_tangent": 0.2, "eps_normal": 0.2} | (kwargs or {})
            ch = Bent(encode, decode)
            if kwargs and not accept:
                return Setup(lambda: robustreg.TNAR(net, ch, **extra), [net])
            reg = robustreg.TNAR(net, ch, **extra)
            return Setup(
                lambda: reg(x() if x else xs, *args(), **{k: v() for k, v in call_kw.items()}), [net], [reg, ch]
            )

        return Case("TNAR", what, build, expect, arg)

    def entmin(
        what: str,
        expect: type[Exception] | None,
        arg: str,
        call: Callable[[robustreg.EntMin], object],
        model: str = "logits",
        dtype: torch.dtype | None = None,
    ) -> Case:
        def build(accept: bool) -> Setup:
            net = _prepared(MLP(model), accept, dtype)
            reg = robustreg.EntMin(net)
            return Setup(lambda: call(reg), [net], [reg])

        return Case("EntMin", what, build, expect, arg)

    logits = torch.randn(4, CLASSES)
    out = [
        vat("x of dtype int64", TypeError, "x", x=lambda: xs.long()),
        vat("x with a NaN", ValueError, "x", x=lambda: with_nan(xs)),
        vat("x with an inf", ValueError, "x", x=lambda: with_nan(xs, -math.inf)),
        vat("x an empty batch", ValueError, "x", x=lambda: xs[:0]),
        vat("x a list", TypeError, "x", x=lambda: xs.tolist()),
        vat("x without a batch dimension", ValueError, "x", x=lambda: xs[0]),
        vat("logits a list", TypeError, "logits", logits=lambda: logits.tolist()),
        vat("logits with the wrong class count", ValueError, "logits", logits=lambda: torch.randn(4, 5)),
        vat("logits of the wrong batch", ValueError, "logits", logits=lambda: logits[:2]),
        vat("logits (B,)", ValueError, "logits", logits=lambda: logits[:, 0]),
        shows(vat("logits with a NaN", None, "", logits=lambda: with_nan(logits))),
        shows(vat("a diverged model (NaN logits)", None, "", model="nan")),
        vat("logits of dtype int64", TypeError, "logits", logits=lambda: logits.long()),
        vat("model returns (B,)", ValueError, "model", model="flat"),
        vat("model returns a tuple", ValueError, "model", model="tuple"),
        vat("eps = 0", ValueError, "eps", kwargs={"eps": 0.0}),
        vat("eps a string", TypeError, "eps", kwargs={"eps": "0.5"}),
        vat("xi < 0", ValueError, "xi", kwargs={"xi": -1e-6}),
        vat("n_power = -1", ValueError, "n_power", kwargs={"n_power": -1}),
        vat("n_power = True", TypeError, "n_power", kwargs={"n_power": True}),
        vat('method="exact"', ValueError, "method", kwargs={"method": "exact"}),
        vat('bn="none"', ValueError, "bn", kwargs={"bn": "none"}),
        vat('method="hvp" with bn="train"', ValueError, "bn", kwargs={"method": "hvp", "bn": "train"}),
        vat("logits= of the clean pass", None, "", logits=lambda: logits),
        vat("n_power = 0", None, "", kwargs={"n_power": 0}),
        vat('method="hvp"', None, "", kwargs={"method": "hvp"}),
        vat("labels (x, y)", TypeError, "labels", args=lambda: (ys,)),
        vat("logits passed by position", TypeError, "logits", args=lambda: (logits,)),
        vat("a float64 model, float32 x", TypeError, "x", dtype=torch.float64),
        vat("a float64 model, float32 x, with logits=", TypeError, "x", dtype=torch.float64, logits=lambda: logits),
        tnar("x with a NaN", ValueError, "x", x=lambda: with_nan(xs)),
        tnar("x with an inf", ValueError, "x", x=lambda: with_nan(xs, math.inf)),
        tnar("x of dtype int64", TypeError, "x", x=lambda: xs.long()),
        tnar("x an empty batch", ValueError, "x", x=lambda: xs[:0]),
        tnar("chart.encode returns NaN", ValueError, "chart.encode(x)", encode=with_nan),
        tnar("chart.encode drops samples", ValueError, "chart.encode(x)", encode=lambda z: z[:2]),
        tnar("chart.encode returns a tuple", TypeError, "chart.encode(x)", encode=lambda z: (z, z)),
        tnar("chart.decode of the wrong shape", ValueError, "chart.decode(chart.encode(x))", decode=lambda o: o[:, :4]),
        tnar("chart.decode returns inf", ValueError, "chart.decode(chart.encode(x))", decode=lambda o: o * math.inf),
        tnar("chart.decode returns integers", TypeError, "chart.decode(chart.encode(x))", decode=lambda o: o.long()),
        tnar("logits a tuple", TypeError, "logits", logits=lambda: (logits,)),
        tnar("model returns (B,)", ValueError, "model", model="flat"),
        tnar("weights (0, 0)", ValueError, "weights", kwargs={"weights": (0.0, 0.0)}),
        tnar("weights a number", TypeError, "weights", kwargs={"weights": 1.0}),
        tnar("weights (1, nan)", ValueError, "weights", kwargs={"weights": (1.0, math.nan)}),
        tnar("eps_tangent < 0", ValueError, "eps_tangent", kwargs={"eps_tangent": -0.2}),
        tnar("cg_iters = 0", ValueError, "cg_iters", kwargs={"cg_iters": 0}),
        tnar('tangent="curved"', ValueError, "tangent", kwargs={"tangent": "curved"}),
        tnar('normalize="linf"', ValueError, "normalize", kwargs={"normalize": "linf"}),
        tnar('normal_start="tangent"', ValueError, "normal_start", kwargs={"normal_start": "tangent"}),
        tnar('normal="official", zeta=-1', ValueError, "zeta", kwargs={"normal": "official", "zeta": -1.0}),
        Case(
            "TNAR",
            "chart without encode/decode",
            _constructor(lambda: robustreg.TNAR(MLP(), object(), eps_tangent=0.1, eps_normal=0.1)),
            TypeError,
            "chart",
        ),
        tnar("a valid call", None, ""),
        shows(tnar("a diverged model (NaN logits)", None, "", model="nan")),
        tnar("TAR alone, exact products", None, "", kwargs={"weights": (1.0, 0.0), "method": "hvp"}),
        tnar("labels (x, y)", TypeError, "labels", args=lambda: (ys,)),
        tnar("a float64 model, float32 x", TypeError, "x", dtype=torch.float64),
        entmin("x with a NaN", ValueError, "x", lambda r: r(with_nan(xs))),
        entmin("x of dtype int64", TypeError, "x", lambda r: r(xs.long())),
        entmin("neither x nor logits", TypeError, "x", lambda r: r()),
        entmin("logits a list", TypeError, "logits", lambda r: r(logits=logits.tolist())),
        shows(entmin("logits with an inf", None, "", lambda r: r(logits=with_nan(logits, math.inf)))),
        shows(entmin("a diverged model (NaN logits)", None, "", lambda r: r(xs), model="nan")),
        entmin("logits (B,)", ValueError, "logits", lambda r: r(logits=logits[:, 0])),
        entmin("logits of another batch than x", ValueError, "logits", lambda r: r(xs, logits=logits[:3])),
        entmin("model returns (B,)", ValueError, "model", lambda r: r(xs), model="flat"),
        Case("EntMin", "model a function", _constructor(lambda: robustreg.EntMin(lambda t: t)), TypeError, "model"),
        entmin("logits only", None, "", lambda r: r(logits=logits)),
        entmin("x only", None, "", lambda r: r(xs)),
        entmin("labels (x, y)", TypeError, "labels", lambda r: r(xs, ys)),
        entmin("a float64 model, float32 x", TypeError, "x", lambda r: r(xs), dtype=torch.float64),
    ]
    return out


class Bent:
    """A linear chart whose ``encode``/``decode`` outputs pass through ``encode``/``decode``."""

    def __init__(self, encode: Callable | None, decode: Callable | None) -> None:
        self.base, self.bend_encode, self.bend_decode = chart(), encode, decode

    def encode(self, x: Tensor) -> Tensor:
        z = self.base.encode(x)
        return z if self.bend_encode is None else self.bend_encode(z)

    def decode(self, z: Tensor) -> Tensor:
        out = self.base.decode(z)
        return out if self.bend_decode is None else self.bend_decode(out)


def msa_cases() -> list[Case]:
    xs, ys = images()

    def step(
        what: str,
        expect: type[Exception] | None,
        arg: str,
        x: Callable[[], object] | None = None,
        y: Callable[[], object] | None = None,
        model: str = "logits",
        dtype: torch.dtype | None = None,
        **kw: object,
    ) -> Case:
        def build(accept: bool) -> Setup:
            net = _prepared(ConvNet(model), accept, dtype)
            msa = MSA(net, beta=1.0, **kw)
            return Setup(lambda: msa.step(x() if x else xs, y() if y else ys), [net], [msa], mutates=True)

        return Case("MSA", what, build, expect, arg)

    def ctor(what: str, exc: type[Exception], arg: str, **kw: object) -> Case:
        return Case("MSA", what, _constructor(lambda: MSA(ConvNet(), **({"beta": 1.0} | kw))), exc, arg)

    return [
        step("x with a NaN, constrain=None", ValueError, "x", x=lambda: with_nan(xs), constrain=None),
        step('x with a NaN, constrain="all"', ValueError, "x", x=lambda: with_nan(xs)),
        step("x with an inf", ValueError, "x", x=lambda: with_nan(xs, math.inf)),
        step("x of dtype int64", TypeError, "x", x=lambda: xs.long()),
        step("x an empty batch", ValueError, "x", x=lambda: xs[:0]),
        step("x a list", TypeError, "x", x=lambda: xs.tolist()),
        step("y a label >= the number of classes", ValueError, "y", y=lambda: torch.full_like(ys, CLASSES)),
        step("y a negative label", ValueError, "y", y=lambda: -1 - ys),
        step("y float labels", TypeError, "y", y=lambda: ys.float()),
        step("y of the wrong length", ValueError, "y", y=lambda: ys[:2]),
        step("model returns (B,)", ValueError, "model", model="flat"),
        step("model returns a tuple", ValueError, "model", model="tuple"),
        ctor("beta = 0", ValueError, "beta", beta=0.0),
        ctor("beta NaN", ValueError, "beta", beta=math.nan),
        ctor("beta True", TypeError, "beta", beta=True),
        ctor("alpha < 0", ValueError, "alpha", alpha=-1.0),
        ctor("radius = 0", ValueError, "radius", radius=0.0),
        ctor('conv_norm="spectral"', ValueError, "conv_norm", conv_norm="spectral"),
        ctor('constrain="fc" (a string)', TypeError, "constrain", constrain="fc"),
        ctor("constrain a missing module", ValueError, "constrain", constrain=["head"]),
        ctor("loss_fn not callable", TypeError, "loss_fn", loss_fn="ce"),
        Case("MSA", "model a function", _constructor(lambda: MSA(lambda t: t, beta=1.0)), TypeError, "model"),
        step("int32 labels", None, "", y=lambda: ys.int()),
        step("a float64 model, float32 x", TypeError, "x", dtype=torch.float64),
    ]


def evaluation_cases() -> list[Case]:
    xs, ys = images()

    def attack(
        target: str,
        what: str,
        expect: type[Exception] | None,
        arg: str,
        make: Callable[[], object],
        x: Callable[[], object] | None = None,
        y: Callable[[], object] | None = None,
        model: str = "logits",
        callable_model: bool = False,
        dtype: torch.dtype | None = None,
    ) -> Case:
        def build(accept: bool) -> Setup:
            net = _prepared(ConvNet(model), accept, dtype)
            used = (lambda t: net(t)) if callable_model else net

            def call() -> object:
                atk = make()  # a bad hyper-parameter fails in the constructor
                return atk(used, x() if x else xs, y() if y else ys)

            return Setup(call, [net])

        return Case(target, what, build, expect, arg)

    pgd = lambda **kw: lambda: robustreg.PGD(**{"eps": 0.1, "steps": 2} | kw)  # noqa: E731
    out = [
        attack("PGD", "x with a NaN", ValueError, "x", pgd(), x=lambda: with_nan(xs)),
        attack("PGD", "x outside bounds", ValueError, "x", pgd(), x=lambda: xs - 2),
        attack("PGD", "x of dtype float16 outside bounds", ValueError, "x", pgd(), x=lambda: (xs + 1).half()),
        attack("PGD", "y a label >= the number of classes", ValueError, "y", pgd(), y=lambda: ys + CLASSES),
        attack("PGD", "y float labels", TypeError, "y", pgd(), y=lambda: ys.double()),
        attack("PGD", "model returns (B,)", ValueError, "model", pgd(), model="flat"),
        attack("PGD", "model a function", TypeError, "model", pgd(), callable_model=True),
        attack("PGD", "eps < 0", ValueError, "eps", pgd(eps=-1.0)),
        attack("PGD", "steps = -1", ValueError, "steps", pgd(steps=-1)),
        attack("PGD", 'norm="l3"', ValueError, "norm", pgd(norm="l3")),
        attack("PGD", "restarts = 0", ValueError, "restarts", pgd(restarts=0)),
        attack("PGD", "restarts = 2 without random_start", ValueError, "restarts", pgd(restarts=2, random_start=False)),
        attack("PGD", 'loss="mse"', ValueError, "loss", pgd(loss="mse")),
        attack("PGD", 'bn="frozen!"', ValueError, "bn", pgd(bn="frozen!")),
        attack("PGD", "kappa = 0", ValueError, "kappa", pgd(kappa=0.0)),
        attack("PGD", "kappa a string", TypeError, "kappa", pgd(kappa="inf")),
        attack("PGD", "alpha NaN", ValueError, "alpha", pgd(alpha=math.nan)),
        attack("FGSM", "eps NaN", ValueError, "eps", lambda: robustreg.FGSM(math.nan)),
        attack("FGSM", "bounds reversed", ValueError, "bounds", lambda: robustreg.FGSM(0.1, bounds=(1.0, 0.0))),
        attack("FGSM", "y a negative label", ValueError, "y", lambda: robustreg.FGSM(0.1), y=lambda: ys - 5),
        attack("CW", "steps = 1.5", TypeError, "steps", lambda: robustreg.CW(0.1, steps=1.5)),
        attack("CW", "y of the wrong length", ValueError, "y", lambda: robustreg.CW(0.1, steps=2), y=lambda: ys[:1]),
        attack("CW", "model returns a tuple", ValueError, "model", lambda: robustreg.CW(0.1, steps=2), model="tuple"),
        attack("PGD", "bounds=None, x outside [0, 1]", None, "", pgd(bounds=None), x=lambda: 3 * xs),
        attack("PGD", "steps = 0", None, "", pgd(steps=0)),
        attack("PGD", "a float64 model, float32 x", TypeError, "x", pgd(), dtype=torch.float64),
        attack(
            "CW",
            "a float32 model, float64 x",
            TypeError,
            "x",
            lambda: robustreg.CW(0.1, steps=2),
            x=lambda: xs.double(),
        ),
        attack("FGSM", "a float64 model, float32 x", TypeError, "x", lambda: robustreg.FGSM(0.1), dtype=torch.float64),
        attack("CW", "uint8 labels", None, "", lambda: robustreg.CW(0.1, steps=2), y=lambda: ys.to(torch.uint8)),
    ]
    aa = lambda **kw: lambda: robustreg.AutoAttack(**{"eps": 0.1, "version": "apgd"} | kw)  # noqa: E731
    out += [
        attack("AutoAttack", "eps = 0", ValueError, "eps", aa(eps=0.0)),
        attack("AutoAttack", 'version="fast"', ValueError, "version", aa(version="fast")),
        attack("AutoAttack", "attacks without version='custom'", ValueError, "attacks", aa(attacks=("apgd-ce",))),
        attack("AutoAttack", "seed = -1", ValueError, "seed", aa(seed=-1)),
    ]
    if autoattack_available():  # the package is imported before the inputs are checked
        out += [
            attack("AutoAttack", "x with an inf", ValueError, "x", aa(), x=lambda: with_nan(xs, math.inf)),
            attack("AutoAttack", "y a label >= the number of classes", ValueError, "y", aa(), y=lambda: ys + 3),
            attack("AutoAttack", "model returns (B,)", ValueError, "model", aa(), model="flat"),
        ]

    def evaluate(
        target: str,
        what: str,
        expect: type[Exception] | None,
        arg: str,
        run: Callable[[nn.Module], object],
        model: str = "logits",
    ) -> Case:
        def build(accept: bool) -> Setup:
            net = _prepared(ConvNet(model), accept)
            return Setup(lambda: run(net), [net])

        return Case(target, what, build, expect, arg)

    atk = robustreg.PGD(eps=0.1, steps=1)
    ra = robustreg.robust_accuracy
    out += [
        evaluate(
            "robust_accuracy",
            "model returns (B,)",
            ValueError,
            "model",
            lambda m: ra(m, (xs, ys), attack=atk),
            model="flat",
        ),
        evaluate(
            "robust_accuracy",
            "model returns a tuple",
            ValueError,
            "model",
            lambda m: ra(m, (xs, ys), attack=atk),
            model="tuple",
        ),
        evaluate(
            "robust_accuracy",
            "y a label >= the number of classes",
            ValueError,
            "y",
            lambda m: ra(m, (xs, ys + CLASSES), attack=atk),
        ),
        evaluate(
            "robust_accuracy", "y a negative label", ValueError, "y", lambda m: ra(m, (xs, ys - CLASSES), attack=atk)
        ),
        evaluate("robust_accuracy", "y float labels", TypeError, "y", lambda m: ra(m, (xs, ys.float()), attack=atk)),
        evaluate("robust_accuracy", "x with a NaN", ValueError, "x", lambda m: ra(m, (with_nan(xs), ys), attack=atk)),
        evaluate("robust_accuracy", "x of dtype int64", TypeError, "x", lambda m: ra(m, (xs.long(), ys), attack=atk)),
        evaluate(
            "robust_accuracy",
            "data of different lengths",
            ValueError,
            "data",
            lambda m: ra(m, (xs, ys[:2]), attack=atk),
        ),
        evaluate("robust_accuracy", "data a number", TypeError, "data", lambda m: ra(m, 7, attack=atk)),
        evaluate(
            "robust_accuracy",
            "data yielding tensors, not batches",
            TypeError,
            "data",
            lambda m: ra(m, [xs, ys, xs], attack=atk),
        ),
        evaluate("robust_accuracy", "data empty", ValueError, "data", lambda m: ra(m, [], attack=atk)),
        evaluate("robust_accuracy", "attack not callable", TypeError, "attack", lambda m: ra(m, (xs, ys), attack=3)),
        evaluate(
            "robust_accuracy",
            "attack returns another shape",
            ValueError,
            "attack",
            lambda m: ra(m, (xs, ys), attack=lambda net, x, y: x[:, :, :4]),
        ),
        evaluate(
            "robust_accuracy",
            "batch_size = 0",
            ValueError,
            "batch_size",
            lambda m: ra(m, (xs, ys), attack=atk, batch_size=0),
        ),
        evaluate(
            "robust_accuracy",
            "progress not callable",
            TypeError,
            "progress",
            lambda m: ra(m, (xs, ys), attack=atk, progress=1),
        ),
        evaluate(
            "robust_accuracy",
            "model a function",
            TypeError,
            "model",
            lambda m: ra(lambda t: m(t), (xs, ys), attack=atk),
        ),
        evaluate("robust_accuracy", "a pair of tensors", None, "", lambda m: ra(m, (xs, ys), attack=atk)),
        evaluate(
            "robust_accuracy",
            "a loader of (x, y, index)",
            None,
            "",
            lambda m: ra(m, [(xs, ys, torch.arange(4))], attack={"pgd": atk, "fgsm": robustreg.FGSM(0.1)}),
        ),
    ]
    gm = lambda m, **kw: robustreg.gradient_masking_report(  # noqa: E731
        m, (xs, ys), **{"eps": 0.1, "steps": (1, 2), "restarts": 2, "apgd": False} | kw
    )
    out += [
        evaluate("gradient_masking_report", "eps < 0", ValueError, "eps", lambda m: gm(m, eps=-0.1)),
        evaluate("gradient_masking_report", "steps (5, 2)", ValueError, "steps", lambda m: gm(m, steps=(5, 2))),
        evaluate("gradient_masking_report", "steps an int", TypeError, "steps", lambda m: gm(m, steps=5)),
        evaluate("gradient_masking_report", "restarts = 1", ValueError, "restarts", lambda m: gm(m, restarts=1)),
        evaluate("gradient_masking_report", "tolerance = 2", ValueError, "tolerance", lambda m: gm(m, tolerance=2.0)),
        evaluate("gradient_masking_report", "apgd = 1", TypeError, "apgd", lambda m: gm(m, apgd=1)),
        evaluate("gradient_masking_report", 'norm="l1"', ValueError, "norm", lambda m: gm(m, norm="l1")),
        evaluate("gradient_masking_report", "model returns (B,)", ValueError, "model", gm, model="flat"),
        evaluate("gradient_masking_report", "a valid report", None, "", gm),
    ]
    return out


def all_cases() -> list[Case]:
    """Every case, in table order."""
    return engine_cases() + amata_cases() + ssl_cases() + msa_cases() + evaluation_cases()


# -- running -------------------------------------------------------------------------------------


def _bits(t: Tensor) -> tuple[object, ...]:
    """A tensor's dtype, shape and bytes (NaN compares equal to itself, -0.0 differs from 0.0)."""
    flat = t.detach().cpu().contiguous().reshape(-1)
    return (str(t.dtype), tuple(t.shape), flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")


def model_state(model: nn.Module) -> dict[str, object]:
    """Everything a bad input must not change in a model."""
    params = list(model.named_parameters(remove_duplicate=False))
    return {
        "parameter objects": [(n, id(p), isinstance(p, nn.Parameter)) for n, p in params],
        "parameters": [(n, _bits(p)) for n, p in params],
        "buffers": [(n, _bits(b)) for n, b in model.named_buffers()],
        ".grad": [(n, None if p.grad is None else _bits(p.grad)) for n, p in params],
        "requires_grad": [(n, p.requires_grad) for n, p in params],
        "training": [(n, m.training) for n, m in model.named_modules()],
        "track_running_stats": [(n, getattr(m, "track_running_stats", None)) for n, m in model.named_modules()],
    }


def object_state(obj: object, depth: int = 0) -> object:
    """A comparable picture of an object's attributes (tensors by their bits, modules by identity)."""
    if isinstance(obj, Tensor):
        return ("tensor", _bits(obj))
    if isinstance(obj, (nn.Module, types.FunctionType, types.MethodType, types.BuiltinFunctionType)):
        return ("id", id(obj))
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return repr(obj)
    if isinstance(obj, (list, tuple)):
        return tuple(object_state(v, depth + 1) for v in obj)
    if isinstance(obj, dict):
        return tuple(sorted((repr(k), object_state(v, depth + 1)) for k, v in obj.items()))
    if hasattr(obj, "__dict__") and depth < 4:
        return (type(obj).__name__, object_state(vars(obj), depth + 1))
    return ("id", id(obj))


def _names(message: str, arg: str) -> bool:
    """Whether ``message`` names ``arg`` as a word (not inside another word)."""
    return re.search(rf"(?<![\w.]){re.escape(arg)}(?![\w])", message) is not None


def run_case(case: Case) -> Outcome:
    """Run one case and judge it (see the module docstring)."""
    accept = case.expect is None
    setup = case.build(accept)
    models = [model_state(m) for m in setup.models]
    objects = [object_state(o) for o in setup.objects]
    error: BaseException | None = None
    value: object = None
    try:
        value = setup.call()
    except Exception as err:  # judged below: the type and the message must be the case's
        error = err
    if accept:
        if error is not None:
            ok, result, detail = False, "refused", f"{type(error).__name__}: {error}"
        elif case.nonfinite:
            shown = isinstance(value, Tensor) and value.dim() == 0 and not bool(torch.isfinite(value))
            ok, result, detail = shown, "accepted" if shown else "hidden", f"returned {value!r}"
        elif isinstance(value, Tensor) and value.dim() == 0 and not bool(torch.isfinite(value)):
            ok, result, detail = False, "non-finite", f"accepted, but returned {float(value)}"
        else:
            ok, result, detail = True, "accepted", ""
    elif error is None:
        ok, result, detail = False, "no error", "accepted a bad input"
    else:
        detail = f"{type(error).__name__}: {error}"
        assert case.expect is not None
        if not isinstance(error, case.expect):
            ok, result = False, f"{type(error).__name__}, not {case.expect.__name__}"
        elif not _names(str(error), case.arg):
            ok, result = False, f"message does not name {case.arg!r}"
        else:
            ok, result = True, "error"
    effects = []
    for before, model in zip(models, setup.models, strict=True):
        after = model_state(model)
        skip = ("parameters", "buffers") if accept and setup.mutates else ()
        effects += [key for key in before if key not in skip and before[key] != after[key]]
    if not accept:
        effects += [
            f"{type(o).__name__} state" for o, b in zip(setup.objects, objects, strict=True) if object_state(o) != b
        ]
    return Outcome(case, ok and not effects, result, detail, tuple(effects))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=cli.summary(__doc__), formatter_class=cli.HelpFormatter)
    parser.add_argument("--failures", action="store_true", help="list only the failing cases")
    parser.add_argument("--out", type=Path, default=None, help="also write every outcome to this JSON file")
    args = parser.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    cases, outcomes = all_cases(), []
    with progress_bar() as bar:
        task = bar.add_task("bad inputs", total=len(cases))
        for case in cases:
            outcomes.append(run_case(case))
            bar.advance(task)
            if args.out is not None and (len(outcomes) % 20 == 0 or len(outcomes) == len(cases)):
                rows = [outcome_row(o) for o in outcomes]
                write_json(args.out, {"partial": len(outcomes) < len(cases), "cases": len(cases), "outcomes": rows})
    table = Table(title="robustreg: bad inputs", show_lines=False)
    for col in ("object", "input", "expected", "outcome", "side effects", "message"):
        table.add_column(col, overflow="fold")
    for o in outcomes:
        if args.failures and o.ok:
            continue
        style = None if o.ok else "bold red"
        expected = f"{o.case.expect.__name__} ({o.case.arg})" if o.case.expect else "accept"
        expected += ", loss non-finite" if o.case.nonfinite else ""
        table.add_row(
            o.case.target,
            o.case.what,
            expected,
            o.result,
            ", ".join(o.side_effects) or "none",
            o.detail[:110],
            style=style,
        )
    console = Console(width=200)
    console.print(table)
    clean = sum(o.result in ("error", "accepted") for o in outcomes)
    effects = sum(bool(o.side_effects) for o in outcomes)
    errors = sum(o.case.expect is not None for o in outcomes)
    failed = sum(not o.ok for o in outcomes)
    console.print(
        f"{len(outcomes)} cases ({errors} bad inputs, {len(outcomes) - errors} valid ones) over "
        f"{len({o.case.target for o in outcomes})} public objects: {clean} clear errors/accepted, "
        f"{effects} side effects, {failed} failures"
    )
    return 1 if failed else 0


def outcome_row(o: Outcome) -> dict[str, object]:
    """An outcome as a JSON object."""
    expected = o.case.expect.__name__ if o.case.expect else "accept"
    return {"id": o.case.id, "object": o.case.target, "input": o.case.what, "expected": expected,
            "arg": o.case.arg, "ok": o.ok, "outcome": o.result, "side_effects": list(o.side_effects),
            "message": o.detail}  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
