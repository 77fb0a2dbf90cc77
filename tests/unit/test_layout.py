"""The direction of the house: the judge works on saved runs, so it never imports what starts
processes (`proc`), drives a guest (`guest/`) or builds a kernel (`kernel/`); nor does it import
the campaigns or the runner that sit above it. Read from the source, so that an import made
inside a function counts too."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parents[2] / "harness"
FORBIDDEN_FOR_JUDGE = ("harness.proc", "harness.guest", "harness.kernel", "harness.campaign", "harness.runner",
                       "harness.cli", "subprocess", "pexpect", "paramiko")


def package_of(path: Path) -> str:
    return ".".join(path.relative_to(HARNESS.parent).with_suffix("").parts[:-1])


def imported_modules(path: Path, package: str) -> set[str]:
    """Absolute names of every module `path` (in `package`) imports, wherever the import stands."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{a.name}" for a in node.names)
    return names


def offending(path: Path, package: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(m for m in imported_modules(path, package) for f in forbidden if m == f or m.startswith(f + "."))


@pytest.mark.parametrize("path", sorted((HARNESS / "judge").glob("*.py")), ids=lambda p: p.name)
def test_judge_imports_no_runner_guest_or_kernel(path: Path) -> None:
    assert offending(path, package_of(path), FORBIDDEN_FOR_JUDGE) == []


def test_the_check_sees_relative_and_nested_imports(tmp_path: Path) -> None:
    """The negative control: a judge module that imported proc inside a function is caught."""
    probe = tmp_path / "probe.py"
    probe.write_text("import json\n\ndef f():\n    from .. import proc\n    from ..guest import vm\n    return proc, vm\n")
    assert offending(probe, "harness.judge", FORBIDDEN_FOR_JUDGE) == ["harness.guest", "harness.guest.vm", "harness.proc"]


def test_every_package_is_one_level_deep() -> None:
    """One level of packages: kernel, guest, judge, campaign, daemons beside the top-level modules."""
    packages = sorted(p.parent.name for p in HARNESS.glob("*/__init__.py"))
    assert packages == ["campaign", "daemons", "guest", "judge", "kernel"]
    assert not list(HARNESS.glob("*/*/__init__.py"))


def test_no_two_test_modules_share_a_name() -> None:
    """pytest imports test modules by their base name (no packages under tests/): two of one name
    stop the whole collection ("import file mismatch"), the VM tests' too."""
    names = [p.name for p in (HARNESS.parent / "tests").rglob("test_*.py")]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
