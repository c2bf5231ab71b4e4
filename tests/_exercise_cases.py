"""The three tests every exercise checker gets, built from one table of cases.

A case is ``(checker, reference_answer, mutants)``; mutants is a dict {name: wrong answer} or a list of
wrong-answer functions. A dict value may be ``(wrong_answer, words)``: then the failure message must
contain ``words`` (a regular expression, case-insensitive), so each mistake is named, not just caught.
The checker must pass the reference, raise ExerciseFailed on every mutant, and report "not done"
(without raising) for a stub that still raises NotImplementedError.
"""

import re

import pytest

from minigpt.exercises import ExerciseFailed


def stub(*args, **kwargs):
    raise NotImplementedError("HINT")


def _named(mutants) -> dict:
    """{label: mutant}; a list is labelled by function name, and two mutants may not share a label
    (a list of lambdas would otherwise collapse into one '<lambda>' and test only the last)."""
    if isinstance(mutants, dict):
        return mutants
    names = [m.__name__ for m in mutants]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"mutants share the label(s) {duplicates}: give them names in a dict")
    return dict(zip(names, mutants, strict=True))


def checker_tests(cases):
    """Return (test_reference_passes, test_mutant_fails, test_stub_not_done) for a module to bind."""
    checks = [c for c, _, _ in cases]
    mutants = [(c, n, m) for c, _, ms in cases for n, m in _named(ms).items()]

    @pytest.mark.parametrize("check,ref", [(c, r) for c, r, _ in cases], ids=[c.__name__ for c in checks])
    def test_reference_passes(check, ref):
        assert check(ref).status == "passed"

    @pytest.mark.parametrize("check,name,mutant", mutants, ids=[f"{c.__name__}-{n}" for c, n, _ in mutants])
    @pytest.mark.filterwarnings("ignore::UserWarning")
    def test_mutant_fails(check, name, mutant):
        mutant, words = mutant if isinstance(mutant, tuple) else (mutant, None)
        with pytest.raises(ExerciseFailed) as failure:
            check(mutant)
        if words is not None:
            assert re.search(words, str(failure.value), re.IGNORECASE), f"{name}: message {failure.value}"

    @pytest.mark.parametrize("check", checks, ids=[c.__name__ for c in checks])
    def test_stub_not_done(check, capsys):
        result = check(stub)
        assert result.status == "not done" and not result
        assert "not done" in capsys.readouterr().out

    return test_reference_passes, test_mutant_fails, test_stub_not_done
