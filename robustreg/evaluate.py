"""Robust accuracy over a dataset, and a sanity report for gradient masking.

Robust accuracy counts a sample as robust when the model classifies it correctly and also
classifies correctly the adversarial example of every attack given (the per-sample worst
case over attacks, as in AutoAttack). Clean predictions use eval mode; each attack runs its
passes under its own ``bn`` policy (``"eval"`` by default); each module's mode is restored
afterwards.

A robustness figure is only as good as the attack behind it. :func:`recommended_attacks` is the
set to publish numbers with: AutoAttack (Croce and Hein, ICML 2020, from the authors'
``pyautoattack``) beside robustreg's PGD and CW, each with steps that cross the ball.

The gradient-masking report follows the checks of Athalye, Carlini, Wagner (ICML 2018) and
Carlini et al., "On Evaluating Adversarial Robustness" (2019): robust accuracy must not rise
with more attack steps or more restarts, single-step FGSM must not beat multi-step PGD, an
attack with an unbounded budget must reach (near) zero accuracy; and, since an attack that has
not converged passes all of these, robust accuracy must no longer fall when restarts are added
to the many-step attack, and robustreg's strongest attack must be within a point of APGD.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from . import _checks
from .attacks import CW, FGSM, PGD
from .autoattack import AutoAttack, available, load_package
from .modes import inner_mode
from .perturb import Bounds, check_bounds, get_ball

Attack = Callable[[nn.Module, Tensor, Tensor], Tensor]
Data = Iterable[Sequence[Tensor]] | tuple[Tensor, Tensor]


@dataclass(frozen=True)
class Accuracy:
    """Clean accuracy, worst-case robust accuracy over all attacks, and each attack's own."""

    clean: float
    robust: float
    n: int
    per_attack: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ProgressEvent:
    """Where an evaluation stands: what the ``progress`` hook of :func:`robust_accuracy` and
    :func:`gradient_masking_report` receives, for a progress bar with an ETA and for partial results.

    The hook gets one event before any batch is read (``attack`` None, ``done`` 0: a bar can
    appear at once, with its total), then one after each attack has run on each batch, in the
    order of the work: batch 1 under every attack (in the mapping's order), batch 2 under every
    attack, and so on. When the data has a length, the last event has ``done == total``; its
    counts are those of the returned :class:`Accuracy` (``clean / samples``, ``robust / finished``,
    ``correct[a] / attacked[a]``).

    Attributes:
        attack: the attack that has just run on batch ``batch``; None in the first event.
        batch: the batch in progress, counted from 1 (0 in the first event).
        batches: the number of batches, or None when ``data`` has no ``len()`` (a generator).
        done: (batch, attack) runs finished.
        total: ``batches × number of attacks``, or None.
        samples: samples read so far, the current batch included.
        clean: of these, the samples the model classifies correctly.
        correct: per attack, how many of the samples it has attacked are still classified correctly.
        attacked: per attack, how many samples it has attacked.
        finished: samples of the batches that every attack has run on.
        robust: of these, the samples correct on clean input and under every attack.
    """

    attack: str | None
    batch: int
    batches: int | None
    done: int
    total: int | None
    samples: int
    clean: int
    correct: dict[str, int]
    attacked: dict[str, int]
    finished: int
    robust: int


ProgressHook = Callable[[ProgressEvent], None]


def _is_pair(data: object) -> bool:
    return isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data)


def iter_batches(data: Data, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """``data``'s ``(x, y)`` batches: an iterable of ``(x, y, ...)`` batches (a DataLoader) as it
    yields them, a pair of tensors in chunks of ``batch_size``. A pair of tensors of different
    lengths or a value that is not iterable is refused at once, a batch that is not
    ``(x, y, ...)`` when it is read. Nothing is checked inside the batches."""
    if _is_pair(data):
        x, y = data
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"data tensors differ in length: x has {x.shape[0]}, y has {y.shape[0]}")
        return ((x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, x.shape[0], batch_size))
    try:
        batches = iter(data)
    except TypeError:
        kind = type(data).__name__
        raise TypeError(f"data must be an iterable of (x, y, ...) batches or a pair of tensors, got {kind}") from None
    return (_pair(batch) for batch in batches)


def _pair(batch: object) -> tuple[Tensor, Tensor]:
    if isinstance(batch, Tensor) or not isinstance(batch, Sequence) or len(batch) < 2:
        raise TypeError(f"data must yield (x, y, ...) batches, got a {type(batch).__name__}")
    return batch[0], batch[1]


def count_batches(data: Data, batch_size: int) -> int | None:
    """How many batches :func:`iter_batches` yields for ``data``, or None when it has no length."""
    if _is_pair(data):
        return math.ceil(data[0].shape[0] / batch_size)
    try:
        return len(data)  # type: ignore[arg-type]
    except TypeError:  # a generator, a loader of an IterableDataset
        return None


def model_device(model: nn.Module) -> torch.device | None:
    """Where an evaluation sends its batches by default: the device of the model's first
    parameter (None for a model without parameters: batches stay where they are)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else None


def clean_pass(
    model: nn.Module, x: object, y: object, device: torch.device | str | None
) -> tuple[Tensor, Tensor, Tensor]:
    """One batch of an evaluation loop, checked and moved: x a non-empty finite floating batch of the
    model's dtype, y integer labels ``(B,)``, both sent to ``device``; the model's clean logits
    ``(B, C)`` (without gradients, in the mode the caller set) with every label in its classes.
    Returns ``(x, y, logits)``."""
    x = _checks.check_x(x, None)
    y = _checks.check_y(y, x.shape[0])
    x, y = x.to(device), y.to(device)
    _checks.check_dtype(model, x)
    with torch.no_grad():  # no gradients: checking the output afterwards changes nothing
        logits = _checks.check_output(model(x), x.shape[0])
    _checks.check_classes(y, logits.shape[1])
    return x, y, logits


def check_hook(name: str, value: object) -> None:
    """``value`` is callable or None (``TypeError`` naming ``name`` otherwise)."""
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be callable or None, got {type(value).__name__}")


def robust_accuracy(
    model: nn.Module,
    data: Data,
    *,
    attack: Attack | Mapping[str, Attack],
    batch_size: int = 256,
    device: torch.device | str | None = None,
    progress: ProgressHook | None = None,
    on_batch: Callable[[Accuracy], None] | None = None,
) -> Accuracy:
    """Clean and robust accuracy of ``model`` on ``data`` under ``attack``.

    Args:
        model: a classifier returning logits.
        data: an iterable of ``(x, y, ...)`` batches (a DataLoader) or a pair of tensors.
        attack: one attack ``(model, x, y) -> x_adv`` (e.g. :class:`robustreg.PGD`) or a
            mapping ``name -> attack``; robust means correct under every one of them.
        batch_size: the chunk size when ``data`` is a pair of tensors.
        device: where batches go; by default the device of the model's parameters.
        progress: called with a :class:`ProgressEvent` before the first batch is read and after
            every attack on every batch: the attack's name, batches and runs done out of their
            totals, and the running counts (for a progress bar with an ETA, a log line per
            attack, partial results of a long evaluation). It runs between attacks, with the
            model in eval mode, and must not change the model; an exception it raises ends the
            evaluation (the model's modes are restored). None (the default) changes nothing.
        on_batch: deprecated, use ``progress``: called after every batch with the
            :class:`Accuracy` of the samples so far.

    Returns:
        :class:`Accuracy` with ``clean``, ``robust``, ``n`` and ``per_attack`` (each attack's
        accuracy on its own; for a single attack the key is ``"attack"``).

    Every batch is checked before it is attacked: x a non-empty finite floating batch, y integer
    labels ``(B,)`` in the model's classes, the model's output ``(B, C)`` logits (on the clean
    pass, in eval mode without gradients), each attack's output of x's shape. Bounds are the
    attacks' own to check.

    Example:
        >>> def show(e):
        ...     print(f"{e.done}/{e.total} {e.attack}: {e.correct.get(e.attack, 0)}/{e.attacked.get(e.attack, 0)}")
        >>> acc = robust_accuracy(model, (x, y), attack=PGD(eps=0.1), progress=show)  # doctest: +ELLIPSIS
        0/1 None: 0/0
        1/1 attack: .../8
    """
    _checks.module("model", model)
    attacks = dict(attack) if isinstance(attack, Mapping) else {"attack": attack}
    if not attacks or not all(callable(a) for a in attacks.values()):
        raise TypeError("attack must be a callable (model, x, y) -> x_adv or a non-empty mapping of them")
    _checks.count("batch_size", batch_size, minimum=1)
    check_hook("progress", progress)
    check_hook("on_batch", on_batch)
    if on_batch is not None:
        warnings.warn("on_batch is deprecated: use progress=, whose events carry the counts", DeprecationWarning, 2)
    batches = iter_batches(data, batch_size)
    return _evaluate(model, batches, attacks, count_batches(data, batch_size), device, progress, on_batch)


@dataclass(frozen=True)
class OnCorrect:
    """What :func:`accuracy_on_correct` measured.

    Attributes:
        clean: clean accuracy, ``correct / n``.
        n: samples evaluated.
        correct: of these, the ones classified correctly when clean (the denominator below).
        per_transform: per transform, the fraction of the ``correct`` samples still classified
            correctly after it (NaN when ``correct`` is 0).
    """

    clean: float
    n: int
    correct: int
    per_transform: dict[str, float]


def accuracy_on_correct(
    model: nn.Module,
    data: Data,
    transforms: Mapping[str, Callable[[Tensor], Tensor]],
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    progress: ProgressHook | None = None,
) -> OnCorrect:
    """Accuracy on correctly classified images (Zhang and Zhu, ICML 2019, Sec. 4) under each of
    ``transforms``: of the samples the model classifies correctly when clean, the fraction it still
    classifies correctly after the transform. It separates what a transform does from what the
    model got wrong anyway, so that models of different clean accuracy can be compared.

    Args:
        model: a classifier returning logits, evaluated in eval mode (each module's mode restored
            afterwards).
        data: an iterable of ``(x, y, ...)`` batches (a DataLoader) or a pair of tensors.
        transforms: ``name -> transform``, each a callable on a batch ``x -> x'`` of x's shape
            (:class:`robustreg.interpret.Saturate`, :class:`robustreg.interpret.PatchShuffle`, a
            stylisation network, …), applied to whole batches in the mapping's order.
        batch_size: the chunk size when ``data`` is a pair of tensors.
        device: where batches go; by default the device of the model's parameters.
        progress: receives the :class:`ProgressEvent` s of :func:`robust_accuracy`, the transforms
            in the place of attacks (``correct[name]``: samples classified correctly after the
            transform, over all samples it has seen).

    Returns:
        :class:`OnCorrect`.

    Example:
        >>> res = accuracy_on_correct(model, (x, y), {"saturate-1024": robustreg.interpret.Saturate(1024)})
        >>> res.per_transform["saturate-1024"]  # doctest: +SKIP
        0.93
    """
    _checks.module("model", model)
    if not isinstance(transforms, Mapping) or not transforms or not all(callable(t) for t in transforms.values()):
        raise TypeError("transforms must be a non-empty mapping name -> callable x -> x'")
    _checks.count("batch_size", batch_size, minimum=1)
    check_hook("progress", progress)
    as_attacks: dict[str, Attack] = {name: _ignoring_model(t) for name, t in transforms.items()}
    kept = dict.fromkeys(transforms, 0)
    batches = iter_batches(data, batch_size)
    num_batches = count_batches(data, batch_size)
    acc = _evaluate(model, batches, as_attacks, num_batches, device, progress, None, kept=kept, what="transform")
    correct = round(acc.clean * acc.n)
    per = {name: k / correct if correct else math.nan for name, k in kept.items()}
    return OnCorrect(acc.clean, acc.n, correct, per)


def _ignoring_model(transform: Callable[[Tensor], Tensor]) -> Attack:
    def attack(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return transform(x)

    return attack


def _evaluate(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    attacks: dict[str, Attack],
    num_batches: int | None,
    device: torch.device | str | None,
    progress: ProgressHook | None,
    on_batch: Callable[[Accuracy], None] | None,
    *,
    kept: dict[str, int] | None = None,
    what: str = "attack",
) -> Accuracy:
    """The loop of :func:`robust_accuracy` and :func:`accuracy_on_correct`: batches outside, attacks
    (``what``) inside, with the hooks; ``kept``, when given, counts per attack the samples correct
    both clean and under it."""
    device = model_device(model) if device is None else device
    total = None if num_batches is None else num_batches * len(attacks)
    last = list(attacks)[-1]
    batch = done = samples = finished = clean = robust = 0
    correct, attacked = dict.fromkeys(attacks, 0), dict.fromkeys(attacks, 0)

    def report(name: str | None) -> None:
        if progress is not None:
            counts = (samples, clean, dict(correct), dict(attacked), finished, robust)
            progress(ProgressEvent(name, batch, num_batches, done, total, *counts))

    def accuracy() -> Accuracy:  # of the finished batches
        return Accuracy(clean / samples, robust / samples, samples, {k: v / samples for k, v in correct.items()})

    report(None)
    with inner_mode(model, "eval"):
        for x, y in batches:
            x, y, logits = clean_pass(model, x, y, device)
            ok = logits.argmax(1) == y
            batch += 1
            samples += x.shape[0]
            clean += int(ok.sum())
            robust_ok = ok.clone()
            for name, atk in attacks.items():
                x_adv = atk(model, x, y)
                if not isinstance(x_adv, Tensor) or x_adv.shape != x.shape:
                    shape = tuple(x_adv.shape) if isinstance(x_adv, Tensor) else type(x_adv).__name__
                    raise ValueError(f"{what} {name!r} must return a batch of x's shape {tuple(x.shape)}, got {shape}")
                with torch.no_grad():
                    hit = model(x_adv).argmax(1) == y
                correct[name] += int(hit.sum())
                if kept is not None:
                    kept[name] += int((hit & ok).sum())
                attacked[name] += x.shape[0]
                robust_ok &= hit
                if name == last:  # the batch is finished: its last event counts it
                    robust += int(robust_ok.sum())
                    finished = samples
                done += 1
                report(name)
            if on_batch is not None:
                on_batch(accuracy())
    if samples == 0:
        raise ValueError("data yielded no samples")
    return accuracy()


def recommended_attacks(
    eps: float,
    *,
    norm: str = "linf",
    bounds: Bounds = (0.0, 1.0),
    version: str = "standard",
    steps: int = 40,
    seed: int = 0,
) -> dict[str, Attack]:
    """The attack set to publish robust accuracy with, for :func:`robust_accuracy`.

    AutoAttack ``version`` (:class:`robustreg.AutoAttack`, the authors' ``pyautoattack``:
    ``"standard"``, or ``"apgd"`` = APGD-CE + APGD-T for evaluation during training) beside
    robustreg's PGD-k on the cross-entropy and CW-k on the margin, k = ``steps`` with
    α = 2.5ε/k, so that k·α ≥ 2ε (the steps can cross the ball). The robust accuracy
    :func:`robust_accuracy` reports is the per-sample worst case over the three, never above
    AutoAttack's own; each attack's own accuracy is in ``per_attack``. ``bounds=None`` works
    too (AutoAttack then runs in the batch's enclosing box, never active).

    Raises ImportError with the install command when ``pyautoattack`` is missing: a weaker set
    is never substituted silently (use :class:`robustreg.PGD` / :func:`robustreg.CW` by hand,
    and :func:`gradient_masking_report` to check that they have converged).

    Returns ``{"autoattack-<version>": ..., "pgd<k>": ..., "cw<k>": ...}``.
    """
    _checks.count("steps", steps, minimum=1)
    aa = AutoAttack(eps=eps, norm=norm, version=version, bounds=bounds, seed=seed)
    load_package()  # fail now, with the install command, not at the first batch
    return {
        f"autoattack-{version}": aa,
        f"pgd{steps}": PGD(eps=eps, steps=steps, norm=norm, bounds=bounds),
        f"cw{steps}": CW(eps, steps=steps, norm=norm, bounds=bounds),
    }


@dataclass(frozen=True)
class Check:
    """One check of the report; ``passed`` is ``None`` when it could not run (``detail`` says why)."""

    name: str
    passed: bool | None
    detail: str


@dataclass(frozen=True)
class MaskingReport:
    """Accuracies under each attack of the report and the checks made on them."""

    accuracy: dict[str, float]
    checks: list[Check]

    @property
    def passed(self) -> bool:
        """No check failed (a skipped check does not fail)."""
        return all(c.passed is not False for c in self.checks)

    def __str__(self) -> str:
        lines = [f"{k:>16}: {v:.4f}" for k, v in self.accuracy.items()]
        mark = {True: "ok", False: "FAIL", None: "skip"}
        lines += [f"[{mark[c.passed]}] {c.name}: {c.detail}" for c in self.checks]
        return "\n".join(lines)


def gradient_masking_report(
    model: nn.Module,
    data: Data,
    *,
    eps: float = 8 / 255,
    norm: str = "linf",
    bounds: Bounds = (0.0, 1.0),
    steps: tuple[int, int] = (10, 50),
    restarts: int = 5,
    alpha: float | None = None,
    tolerance: float = 0.01,
    apgd: bool | None = None,
    gap_tolerance: float = 0.01,
    batch_size: int = 256,
    progress: ProgressHook | None = None,
    on_batch: Callable[[Accuracy], None] | None = None,
) -> MaskingReport:
    """Run FGSM, PGD with few and many steps, each with and without restarts, CW with many
    steps, an unbounded PGD and (where ``pyautoattack`` is installed) AutoAttack's APGD-CE +
    APGD-T, and check that the accuracies are ordered as they must be for a model without
    masked gradients and for an attack that has converged:

    - ``more steps``: ``pgd-{many} ≤ pgd-{few}`` (more steps never help the model),
    - ``restarts``: ``pgd-{few}x{restarts} ≤ pgd-{few}`` (more restarts never help the model),
    - ``fgsm vs pgd``: ``pgd-{few} ≤ fgsm`` (one step never beats many),
    - ``unbounded``: PGD-{many} from δ = 0 with PGD-{few}'s step size and a radius that covers
      the whole input box (100·ε without a box) must reach (near) zero accuracy,
    - ``converged``: ``pgd-{many}x{restarts} ≥ pgd-{many} − tolerance``: an accuracy that still
      falls when restarts are added to the many-step attack means the attack has not converged,
      and the figure it gives is too high,
    - ``apgd gap``: ``min(pgd-{many}x{restarts}, cw-{many}) − apgd ≤ gap_tolerance``: robustreg's
      strongest attack within ``gap_tolerance`` of APGD (skipped without ``pyautoattack``, or
      with ``apgd=False``; ``apgd=True`` requires it).

    The first four hold up to ``tolerance`` (a fraction of samples) for the attacks' randomness.
    ``alpha`` is the step of the PGD and CW attacks (default 2.5ε/k for k steps): set it to the
    step of an attack you rely on to see whether that attack converges.

    All attacks run in one :func:`robust_accuracy` pass over ``data``; ``progress`` receives its
    :class:`ProgressEvent` s (one before the first batch, then one per attack and batch, with the
    keys above as attack names), ``on_batch`` (deprecated) its running :class:`Accuracy`.
    """
    _checks.module("model", model)
    _checks.nonneg_float("eps", eps)
    get_ball(norm)
    bounds = check_bounds(bounds)
    if not isinstance(steps, tuple) or len(steps) != 2:
        raise TypeError(f"steps must be a pair (few, many) of ints, got {steps!r}")
    few, many = (_checks.count("steps", s, minimum=1) for s in steps)
    if not few < many:
        raise ValueError(f"steps must be (few, many) with few < many, got {steps}")
    _checks.count("restarts", restarts, minimum=2)
    if alpha is not None:
        _checks.nonneg_float("alpha", alpha)
    _checks.unit_float("tolerance", tolerance)
    _checks.unit_float("gap_tolerance", gap_tolerance)
    if apgd is not None:
        _checks.flag("apgd", apgd)
    run_apgd = available() if apgd is None else apgd
    check_hook("progress", progress)
    check_hook("on_batch", on_batch)
    if on_batch is not None:
        warnings.warn("on_batch is deprecated: use progress=, whose events carry the counts", DeprecationWarning, 2)
    if run_apgd:
        load_package()  # apgd=True without the package: the install command, before any work
    num_batches = count_batches(data, batch_size)
    batches = iter_batches(data, batch_size)
    first = next(batches, None)
    if first is None:
        raise ValueError("data yielded no samples")
    batches = itertools.chain([first], batches)  # a generator's first batch is not lost
    if bounds is None:
        big = 100 * eps
    else:
        width = bounds[1] - bounds[0]
        big = width if norm == "linf" else width * math.sqrt(first[0][0].numel())
    common = {"eps": eps, "norm": norm, "bounds": bounds}
    attacks: dict[str, Attack] = {
        "fgsm": FGSM(**common),
        f"pgd-{few}": PGD(steps=few, alpha=alpha, **common),
        f"pgd-{many}": PGD(steps=many, alpha=alpha, **common),
        f"pgd-{few}x{restarts}": PGD(steps=few, alpha=alpha, restarts=restarts, **common),
        f"pgd-{many}x{restarts}": PGD(steps=many, alpha=alpha, restarts=restarts, **common),
        f"cw-{many}": CW(steps=many, alpha=alpha, **common),
        # From δ = 0 with PGD-few's step: a random start in a huge ball, or a huge step, would
        # leave the data's region and could miss the other class entirely.
        "unbounded": PGD(eps=big, alpha=2.5 * eps / few, steps=many, norm=norm, bounds=bounds, random_start=False),
    }
    if run_apgd:
        attacks["apgd"] = AutoAttack(eps=eps, norm=norm, version="apgd", bounds=bounds)
    res = _evaluate(model, batches, attacks, num_batches, None, progress, on_batch)
    acc = {"clean": res.clean} | res.per_attack
    a_few, a_many = acc[f"pgd-{few}"], acc[f"pgd-{many}"]
    a_rs, a_many_rs, a_cw = acc[f"pgd-{few}x{restarts}"], acc[f"pgd-{many}x{restarts}"], acc[f"cw-{many}"]
    checks = [
        Check("more steps", a_many <= a_few + tolerance, f"PGD-{many} {a_many:.4f} vs PGD-{few} {a_few:.4f}"),
        Check("restarts", a_rs <= a_few + tolerance, f"{restarts} restarts {a_rs:.4f} vs 1 restart {a_few:.4f}"),
        Check("fgsm vs pgd", a_few <= acc["fgsm"] + tolerance, f"PGD-{few} {a_few:.4f} vs FGSM {acc['fgsm']:.4f}"),
        Check("unbounded", acc["unbounded"] <= tolerance, f"accuracy {acc['unbounded']:.4f} at eps={big:.4g}"),
        Check(
            "converged",
            a_many_rs >= a_many - tolerance,
            f"PGD-{many}x{restarts} {a_many_rs:.4f} vs PGD-{many} {a_many:.4f}"
            + (
                "" if a_many_rs >= a_many - tolerance else ": still falling with restarts, the attack has not converged"
            ),
        ),
    ]
    if run_apgd:
        strongest = min(a_many_rs, a_cw)
        gap = strongest - acc["apgd"]
        detail = (
            f"strongest of PGD-{many}x{restarts} / CW-{many} {strongest:.4f} vs APGD {acc['apgd']:.4f} (gap {gap:+.4f})"
        )
        checks.append(Check("apgd gap", gap <= gap_tolerance, detail))
    else:
        checks.append(
            Check("apgd gap", None, f"skipped: {'apgd=False' if apgd is False else 'pyautoattack not installed'}")
        )
    return MaskingReport(acc, checks)
