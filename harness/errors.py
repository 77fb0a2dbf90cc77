"""Errors that end a run before a verdict, each with the exit code a machine acts on.

0 PASS and 1 FAIL come from the verdict; these are the other two: 2 when the input is wrong
(the user must change something), 125 when the kernel could not be tested (`git bisect run`
treats it as "skip": a build or boot failure is never the same as "bad").
"""
from __future__ import annotations

from typing import Sequence

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_UNTESTABLE = 125


def worst(codes: Sequence[int]) -> int:
    """The exit code of a set of runs: a kernel at fault first, then bad usage (the CI set-up
    must be fixed), then anything unexpected (an interrupt), then untestable, then pass."""
    codes = list(codes)
    if not codes:
        return EXIT_USAGE
    for code in (EXIT_FAIL, EXIT_USAGE):
        if code in codes:
            return code
    if other := [c for c in codes if c not in (EXIT_PASS, EXIT_UNTESTABLE)]:
        return other[0]
    return EXIT_UNTESTABLE if EXIT_UNTESTABLE in codes else EXIT_PASS


class HarnessError(Exception):
    exit_code = EXIT_UNTESTABLE


class InputError(HarnessError):
    """Bad input: a missing tool, a tree that is not a kernel, a bad option."""

    exit_code = EXIT_USAGE


class UntestableError(HarnessError):
    """The kernel could not be built or booted, or the infrastructure failed."""

    exit_code = EXIT_UNTESTABLE
