"""Tracebacks that cross the worker boundary are shortened at line ends, never mid-line."""

from __future__ import annotations

import traceback

from baton.runtime.runner import cut_lines


def _long_traceback(causes: int) -> str:
    """A traceback of a chain of ``causes`` exceptions, then the model's own error."""
    cause: BaseException | None = None
    for i in range(causes):
        try:
            raise KeyError(f"step {i}") from cause
        except KeyError as exc:
            cause = exc
    try:
        raise ValueError("the model's own message") from cause
    except ValueError as exc:
        return "".join(traceback.format_exception(exc))


def test_a_long_traceback_keeps_whole_lines_its_start_and_its_exception() -> None:
    text = _long_traceback(60)
    assert len(text) > 4000
    cut = cut_lines(text)
    assert len(cut) <= 4000
    lines = cut.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: the model's own message"
    markers = [line for line in lines if line.endswith(" lines cut)")]
    assert len(markers) == 1 and lines[1] == markers[0]
    n = int(markers[0].removeprefix("... (").split()[0])
    original = text.splitlines()
    assert n == len(original) - (len(lines) - 1)  # the marker counts what it replaced
    assert all(line in original for line in lines[2:])  # every kept line is whole
    assert lines[2:] == original[-(len(lines) - 2):]


def test_a_short_traceback_is_unchanged() -> None:
    text = _long_traceback(1)
    assert cut_lines(text) == text


def test_a_single_huge_line_keeps_its_start_and_says_how_much_was_cut() -> None:
    text = "Traceback (most recent call last):\n  File \"m.py\", line 1\nValueError: " + \
        "x" * 1_000_000 + "\n"
    cut = cut_lines(text)
    assert len(cut) <= 4000
    assert cut.startswith("Traceback (most recent call last):\n")
    assert cut.rstrip("\n").endswith(" characters cut)") and "ValueError: xxx" in cut
    assert "... (1 lines cut)" in cut  # the File line made room for the exception's start


def test_one_long_line_keeps_as_much_of_its_start_as_fits() -> None:
    cut = cut_lines("ValueError: " + "x" * 10_000, 1000)
    assert 900 <= len(cut) <= 1000 and cut.endswith(" characters cut)")
