"""Errors that end a run before a verdict, each with the exit code a machine acts on.

0 PASS and 1 FAIL come from the verdict; these are the other two: 2 when the input is wrong
(the user must change something), 125 when the kernel could not be tested (`git bisect run`
treats it as "skip": a build or boot failure is never the same as "bad").
"""
from __future__ import annotations

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_UNTESTABLE = 125


class HarnessError(Exception):
    exit_code = EXIT_UNTESTABLE


class InputError(HarnessError):
    """Bad input: a missing tool, a tree that is not a kernel, a bad option."""

    exit_code = EXIT_USAGE


class UntestableError(HarnessError):
    """The kernel could not be built or booted, or the infrastructure failed."""

    exit_code = EXIT_UNTESTABLE
