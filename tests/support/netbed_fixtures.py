"""Pytest fixtures for the namespace test bed (tests/support/netbed.py).

``tests/conftest.py`` registers them for every test module.

Without root the fixtures skip with the reason from ``require_root()``;
under CI (``CI`` set to a true value) they fail instead, because a CI run
that silently skipped every network test would prove nothing.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import pytest

from tests.support.netbed import Bed, require_root

BedFactory = Callable[..., Bed]


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_or_fail(reason: str) -> NoReturn:
    if in_ci():
        pytest.fail(f"{reason} (CI is set, so this must not be skipped)", pytrace=False)
    pytest.skip(reason)


def ensure_bed_possible() -> None:
    reason = require_root()
    if reason is not None:
        skip_or_fail(reason)


@pytest.fixture
def bed() -> Iterator[Bed]:
    """A fresh Bed (src namespace only; add dsts in the test), always closed."""
    ensure_bed_possible()
    test_bed = Bed()
    try:
        yield test_bed
    finally:
        test_bed.close()


@pytest.fixture
def bed_factory() -> Iterator[BedFactory]:
    """Makes Beds with custom options, e.g. ``bed_factory(unprivileged_ping=False)``.

    Every Bed made is closed at teardown, including ones the test already
    closed (closing is idempotent).
    """
    ensure_bed_possible()
    made: list[Bed] = []

    def make(**kwargs: Any) -> Bed:
        new_bed = Bed(**kwargs)
        made.append(new_bed)
        return new_bed

    try:
        yield make
    finally:
        errors = []
        for made_bed in reversed(made):
            try:
                made_bed.close()
            except Exception as exc:  # teardown must reach every bed
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture
def fping_path() -> str:
    """Path of the fping binary (skips, or fails in CI, when missing)."""
    path = shutil.which("fping")
    if path is None:
        skip_or_fail("fping is not installed")
    return path
