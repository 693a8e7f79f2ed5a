"""Fault tests: each runs twice, a short version in the default suite (seconds) and a
long one (``long``, only with XUNFANG_LONG=1; see README, Tests).

A test that takes a ``scale`` argument gets both: ``scale.short`` is True for the short
run, and ``scale.pick(short, long)`` chooses a figure (kills, cuts, stops) for it.
"""

from __future__ import annotations

import pytest

from tests.support.faults import Scale


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "scale" in metafunc.fixturenames:
        metafunc.parametrize("scale", [
            pytest.param(Scale(True), id="short"),
            pytest.param(Scale(False), id="long",
                         marks=[pytest.mark.long, pytest.mark.timeout(3600)]),
        ])
