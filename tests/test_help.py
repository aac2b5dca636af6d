"""``--help`` tells the truth: every program's description is a whole sentence, every option states
its default once, every stated default is the one the program really uses (the parser's, and for
options that depend on ``--dataset`` or ``--kind``, what the recipe resolves on each of them)."""

from __future__ import annotations

import argparse
import re
import runpy
import sys
from pathlib import Path

import pytest

from robustreg import cli

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ("robust", "semisupervised", "chart", "msa_stability", "evaluate", "cifar_tnar", "demo")
BENCHMARKS = ("bad_inputs", "device_check", "fashion_ssl", "fault_injection", "peak_memory", "step_cost", "threads",
              "time_to_robust", "two_rings_ssl")  # fmt: skip
PROGRAMS = [*(f"recipes/{n}.py" for n in RECIPES), *(f"benchmarks/{n}.py" for n in BENCHMARKS)]


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def capture_parser(program: str, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The parser ``program`` builds, taken at its ``parse_args`` call (nothing after it runs)."""

    def intercept(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        raise _Captured(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", intercept)
    monkeypatch.setattr(sys, "path", [str(ROOT / "recipes"), str(ROOT / "benchmarks"), *sys.path])
    monkeypatch.setenv("COLUMNS", "100")
    try:
        if program.endswith(".py"):
            monkeypatch.setattr(sys, "argv", [program])
            runpy.run_path(str(ROOT / program), run_name="__main__")
        else:
            monkeypatch.setattr(sys, "argv", [program])
            monkeypatch.delitem(sys.modules, program, raising=False)  # run afresh, as `python -m` does
            runpy.run_module(program, run_name="__main__", alter_sys=False)
    except _Captured as captured:
        return captured.parser
    raise AssertionError(f"{program} never parsed its arguments")


def option_helps(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each option's expanded help text as ``--help`` prints it, on one line."""
    formatter = parser._get_formatter()
    out = {}
    for action in parser._actions:
        if action.option_strings and action.help is not argparse.SUPPRESS:
            text = formatter._expand_help(action) if action.help else ""
            out[action.option_strings[0]] = " ".join(text.split())
    return out


@pytest.mark.parametrize("program", PROGRAMS)
def test_help_is_whole_and_states_the_real_defaults(program, monkeypatch):
    parser = capture_parser(program, monkeypatch)
    description = parser.description or ""
    assert description.endswith((".", ".)")), f"{program}: the description stops mid-sentence: {description!r}"
    assert "``" not in description and "\n" not in description
    for flag, text in option_helps(parser).items():
        if flag == "-h":
            continue
        assert text, f"{program} {flag}: no help text"
        assert len(re.findall(r"\(default", text)) <= 1, f"{program} {flag}: default stated twice: {text}"
        action = next(a for a in parser._actions if flag in a.option_strings)
        raw = action.help or ""
        if "default" in raw.lower() and "%(default)" not in raw and action.default not in (None, "", False):
            # a default written into the help by hand must be the real one
            assert cli.show(action.default) in text, f"{program} {flag}: {text!r}, real default {action.default!r}"
        if (match := re.search(r"\(default: (.*)\)$", text)) and action.default not in (None, ""):  # described
            stated = match.group(1)
            assert stated == cli.show(action.default) or stated == str(action.default), (
                f"{program} {flag}: --help says {stated!r}, the parser's default is {action.default!r}"
            )
    help_text = parser.format_help()
    assert "%(" not in help_text and "(default: None)" not in help_text


def _by_dataset_claims(text: str) -> dict[str, str]:
    """``(default by …: 0.3 mnist, fashionmnist; = --eps svhn)`` → {"mnist": "0.3", …, "svhn": "= --eps"}."""
    match = re.search(r"\(default by [^:]+: (.*)\)", text)
    claims = {}
    for group in match.group(1).split("; ") if match else []:
        words = group.split(" ")
        cut = 2 if words[0] == "=" else 1
        for name in " ".join(words[cut:]).split(", "):
            claims[name] = " ".join(words[:cut])
    return claims


@pytest.mark.parametrize(
    ("recipe", "module", "config"), [("recipes/robust.py", "robust", "RobustConfig"),
                                     ("recipes/semisupervised.py", "semisupervised", "SSLConfig")],
)  # fmt: skip
def test_per_dataset_defaults_in_help_are_what_the_recipe_resolves(recipe, module, config, monkeypatch):
    parser = capture_parser(recipe, monkeypatch)
    monkeypatch.undo()
    monkeypatch.setattr(sys, "path", [str(ROOT / "recipes"), *sys.path])
    mod = __import__(module)
    skeleton = __import__("skeleton")
    checked = 0
    for flag, text in option_helps(parser).items():
        claims = _by_dataset_claims(text)
        field = flag.removeprefix("--").replace("-", "_")
        for dataset, stated in claims.items():
            cfg = mod.resolve(skeleton.parse(getattr(mod, config), ["--dataset", dataset], None))
            real = getattr(cfg, field)
            if stated == "= --eps":
                assert real == cfg.eps, f"{recipe} {flag} on {dataset}: --help says = --eps, resolved {real}"
            else:
                assert stated == cli.show(real), f"{recipe} {flag} on {dataset}: --help says {stated}, resolved {real}"
            checked += 1
    assert checked >= 40  # every None-default option, on every data set


def test_chart_defaults_by_kind_are_what_build_uses(monkeypatch):
    parser = capture_parser("recipes/chart.py", monkeypatch)
    monkeypatch.undo()
    monkeypatch.setattr(sys, "path", [str(ROOT / "recipes"), *sys.path])
    chart = __import__("chart")
    helps = option_helps(parser)
    for kind in chart.KINDS:
        shape = (2,) if kind == "mlp-ae" else (1, 28, 28)
        model = chart.build(kind, shape)
        assert _by_dataset_claims(helps["--latent"])[kind] == str(model.latent)
    assert _by_dataset_claims(helps["--lr"])["lgan"] == cli.show(chart.LGAN_DEFAULTS["lr"])  # the library's loop


def test_summary_and_show():
    assert cli.summary("A ``b`` and :class:`c.D`.\nmore\n\nnot this") == "A b and c.D. more"
    assert cli.show(8 / 255) == "0.03137" and cli.show([1, 2]) == "1 2" and cli.show(None) == "none"
    table = {"a": {"x": 1}, "b": {"x": 1}, "c": {}}
    assert cli.by_dataset("x", table) == "default by data set: 1 a, b"
    assert cli.by_dataset("x", table, "= --y", label="--kind") == "default by --kind: 1 a, b; = --y c"
