"""harness.ci: a shard of the matrix and a submission, run with a stand-in for the harness's
child (the real CLI is tested elsewhere; its runs take minutes), reports and exit codes."""
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.campaign import ci, matrix
from harness import cli
from harness.judge import report
from helpers import FIXTURES


@pytest.mark.parametrize("codes, worst", [
    ([0, 0], 0), ([0, 125], 125), ([125, 1, 0], 1), ([2, 125], 2), ([1, 2], 1), ([0, 130, 125], 130), ([], 2),
])
def test_the_worst_code_wins(codes, worst):
    assert ci.worst(codes) == worst


class FakeHarness:
    """Plays `failover-harness run`: a captured run judged into the cell's --output, by scenario."""

    def __init__(self, tmp_path: Path, fixture_for: dict[str, str | None]) -> None:
        self.tmp_path, self.fixture_for, self.calls = tmp_path, fixture_for, []

    def __call__(self, argv: list[str], log: Path) -> tuple[int, str]:
        self.calls.append(argv)
        scenario = argv[argv.index("--scenario") + 1]
        output = Path(argv[argv.index("--output") + 1])
        fixture = self.fixture_for.get(scenario)
        if fixture is None:
            return 2, "failover-harness: --tree /nowhere: no such directory"
        results = report.evaluate(shutil.copytree(FIXTURES / fixture, output / "20260101-000000-run"))
        return cli.exit_code(results["verdict"]), ""


def matrix_args(tmp_path: Path, *extra: str) -> object:
    return cli.parser().parse_args(["matrix", "--scenario", "crash", "--scenario", "no-failover",
                                   "--output", str(tmp_path / "runs"), *extra])


def test_a_shard_runs_its_cells_and_writes_one_report(tmp_path, capsys):
    fake = FakeHarness(tmp_path, {"crash": "run-crash-5-kills", "no-failover": "run-no-failover"})
    code = ci.run_matrix(matrix_args(tmp_path, "--", "--seed", "2"), runner=fake)
    assert code == 1  # no-failover FAILs
    assert [a[:3] for a in fake.calls] == [["run", "--scenario", "crash"], ["run", "--scenario", "no-failover"]]
    assert all(a[-2] == "--output" and "--seed" in a for a in fake.calls)
    out = tmp_path / "runs"
    root = ET.fromstring((out / "junit.xml").read_text())
    assert [s.get("name") for s in root.findall("testsuite")] == ["crash", "no-failover"]
    assert root.get("failures") == "4"  # no-failover: checksum, read-error, reread, unanswered
    md = (out / "report.md").read_text()
    assert md.startswith("### failover-harness: ❌ FAIL") and "| crash | ✅ PASS |" in md
    assert "[2/2] linux-source-6.12/plain/no-failover: FAIL (exit 1)" in capsys.readouterr().out


def test_a_cell_that_never_got_a_run_directory_is_named_in_the_reports(tmp_path):
    fake = FakeHarness(tmp_path, {"crash": "run-crash-5-kills", "no-failover": None})
    assert ci.run_matrix(matrix_args(tmp_path), runner=fake) == 2
    md = (tmp_path / "runs" / "report.md").read_text()
    assert "| no-failover | ⛔ ERROR | failover-harness: --tree /nowhere: no such directory |" in md


def test_the_stand_in_of_a_cell_without_a_run_is_the_error_shape_of_results_json(tmp_path):
    import json
    import jsonschema
    cell = matrix.Cell(matrix.parse_kernel("linux-source-6.12"), "plain", "crash")
    r = ci.results_of(tmp_path, cell, 2, "failover-harness: --tree /nowhere: no such directory\n")
    assert r["verdict"] == "ERROR" and r["failed_checks"] == []
    jsonschema.validate(r, json.loads(report.SCHEMA_FILE.read_text()))


def test_the_shard_runs_only_its_share(tmp_path):
    fake = FakeHarness(tmp_path, {"crash": "run-crash-5-kills", "no-failover": "run-no-failover"})
    ci.run_matrix(matrix_args(tmp_path, "--shard", "2/2"), runner=fake)
    ((scenario,),) = [[a[2]] for a in fake.calls]
    cells = matrix.cells(["linux-source-6.12"], ["plain"], ["crash", "no-failover"])
    assert [scenario] == [c.scenario for c in matrix.shard(cells, 2, 2)]
    assert (tmp_path / "runs" / "report.md").read_text().startswith("### failover-harness (shard 2/2)")


def test_list_runs_nothing(tmp_path, capsys):
    fake = FakeHarness(tmp_path, {})
    assert ci.run_matrix(matrix_args(tmp_path, "--list"), runner=fake) == 0
    assert fake.calls == []
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == ("linux-source-6.12/plain/crash\tfailover-harness run --scenario crash --flavor plain "
                        "--package linux-source-6.12 --transport console")


def test_the_transport_reaches_every_cell(tmp_path):
    """--transport on matrix: each child run is told it (submit: test_submit.py)."""
    fake = FakeHarness(tmp_path, {"crash": "run-crash-5-kills", "no-failover": "run-no-failover"})
    ci.run_matrix(matrix_args(tmp_path, "--transport", "ssh", "--", "--seed", "2"), runner=fake)
    assert fake.calls and all(a[a.index("--transport") + 1] == "ssh" for a in fake.calls)


@pytest.mark.parametrize("argv, message", [
    (["matrix", "--shard", "5/4"], "--shard 5/4: I must be 1..N"),
    (["matrix", "--flavor", "fast"], "unknown flavour 'fast'"),
    (["submit", "--mbox", "/nonexistent.mbx", "--base", "v1"], "--mbox /nonexistent.mbx: no such file"),
    (["submit", "--base", "v1"], "the following arguments are required: --mbox"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_usage_is_one_line_and_exit_2(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
