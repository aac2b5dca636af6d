"""Every case of ``benchmarks/bad_inputs.py`` as its own test: a clear error naming the argument
(or acceptance where the docs allow the input), and no side effect."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
try:
    import bad_inputs
finally:
    sys.path.pop(0)

CASES = bad_inputs.all_cases()


def test_the_cases_are_many_and_distinct():
    ids = [c.id for c in CASES]
    assert len(ids) >= 130
    assert len(set(ids)) == len(ids)
    targets = {c.target for c in CASES}
    for name in ("PGDAT", "FastAT", "FreeAT", "TRADES", "YOPO", "ATTA", "Amata", "VAT", "TNAR", "EntMin", "MSA"):
        assert name in targets
    assert {"PGD", "FGSM", "CW", "robust_accuracy", "gradient_masking_report"} <= targets


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(case):
    outcome = bad_inputs.run_case(case)
    assert outcome.ok, f"{outcome.result}; side effects: {outcome.side_effects}; {outcome.detail}"


def test_a_side_effect_is_detected():
    """The harness itself: a call that moves BatchNorm's running statistics and then raises fails."""

    def build(accept):
        net = bad_inputs._prepared(bad_inputs.ConvNet(), accept)

        def call():
            net(bad_inputs.images()[0])  # a training forward: running statistics move
            raise ValueError("x is bad")

        return bad_inputs.Setup(call, [net])

    outcome = bad_inputs.run_case(bad_inputs.Case("harness", "forward then raise", build, ValueError, "x"))
    assert not outcome.ok and "buffers" in outcome.side_effects


def test_the_script_prints_the_table_and_the_totals_and_exits_zero(capsys):
    assert bad_inputs.main([]) == 0
    out = capsys.readouterr().out
    n = len(CASES)
    assert f"{n} cases" in out and f"{n} clear errors/accepted, 0 side effects, 0 failures" in out
