"""Parametrization helpers: one case list per test, the cases outside the default run marked ``slow``."""
from __future__ import annotations

from collections.abc import Iterable

import pytest

from jaxseq.parity.harness import Config


def split_cases(cases: Iterable, default: Iterable) -> list:
    """``cases`` as pytest params; those not in ``default`` run only in the slow sweep."""
    default = list(default)
    return [case if case in default else
            pytest.param(*(case if isinstance(case, tuple) else (case,)), marks=pytest.mark.slow)
            for case in cases]


def case_id(value) -> str:
    """Test id of one parameter: a config's label, ``key+value`` for option dicts."""
    if isinstance(value, Config):
        return value.label()
    if isinstance(value, dict):
        return "-".join(f"{k}{v}" for k, v in value.items())
    return str(value)
