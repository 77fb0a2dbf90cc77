"""The Markdown report, on runs captured from real runs."""
import json
import shutil
from pathlib import Path

import pytest

from harness.judge import markdown, report
from helpers import FIXTURES

WARNING_SPLAT = FIXTURES / "splats" / "WARNING.log"


def evaluated(name: str, tmp_path: Path, change=None) -> dict:
    run = shutil.copytree(FIXTURES / name, tmp_path / name)
    if change:
        change(run)
    report.evaluate(run)
    return json.loads((run / "results.json").read_text())


def table_rows(text: str) -> list[list[str]]:
    rows = [l for l in text.splitlines() if l.startswith("| ")]
    return [[c.strip() for c in r.strip("|").split(" | ")] for r in rows[1:]]  # without the header


def test_one_passing_run(tmp_path):
    r = evaluated("run-crash-5-kills", tmp_path)
    text = markdown.render([r])
    assert text.startswith("### failover-harness: ✅ PASS\n")
    (row,) = table_rows(text)
    assert row[:2] == ["crash", "✅ PASS"]
    assert row[2] == "5 kills (100% in flight)" and row[3].startswith("5 restores, 5 re-delivered")
    assert "**Why**" not in text and "**Kernel findings**" not in text
    assert f"```sh\n{r['reproduce']}\n```" in text
    # report.evaluate wrote it into the run directory
    assert (tmp_path / "run-crash-5-kills" / "report.md").read_text() == text


def add_warning(run: Path) -> None:
    with open(run / "console.log", "a") as f:
        f.write(WARNING_SPLAT.read_text())


def test_a_submission_of_several_scenarios(tmp_path):
    runs = [evaluated("run-crash-5-kills", tmp_path / "a", add_warning),
            evaluated("run-close-fds", tmp_path / "b", add_warning),
            evaluated("run-no-failover", tmp_path / "c")]
    text = markdown.render(runs, title="failover-harness on v2-cachefiles.mbx",
                           reproduce="failover-harness submit --mbox v2-cachefiles.mbx --base v6.12")
    assert text.startswith("### failover-harness on v2-cachefiles.mbx: ❌ FAIL\n")
    assert [row[:2] for row in table_rows(text)] == [["crash", "❌ FAIL"], ["close-fds", "❌ FAIL"],
                                                     ["no-failover", "❌ FAIL"]]
    # the same bug in two scenarios: listed once, with its fingerprint, where it showed
    (finding,) = [l for l in text.splitlines() if l.startswith("- **WARNING in lkdtm_WARNING**")]
    fp = runs[0]["findings"][0]["fingerprint"]
    assert f"(`{fp}`), 2x in crash, close-fds" in finding
    assert "- no-failover: 70 read error(s)" in text
    # one command reproduces it all
    assert "```sh\nfailover-harness submit --mbox v2-cachefiles.mbx --base v6.12\n```" in text
    assert "failover-harness run" not in text


def test_inconclusive_says_which_evidence_is_missing(tmp_path):
    r = evaluated("run-close-fds", tmp_path, lambda run: (run / "guest" / "trace.txt").write_text(""))
    text = markdown.render([r])
    assert text.startswith("### failover-harness: ⚠️ INCONCLUSIVE")
    assert "- close-fds: missing evidence: reopens in the kernel trace" in text


@pytest.mark.parametrize("verdicts, headline", [
    (["PASS", "INCONCLUSIVE"], "INCONCLUSIVE"), (["PASS", "UNTESTABLE", "FAIL"], "FAIL"),
    (["PASS", "PASS"], "PASS"), (["ERROR", "UNTESTABLE"], "ERROR"), ([], "ERROR"),
])
def test_the_headline_is_the_worst_verdict(verdicts, headline):
    assert markdown.overall([{"verdict": v} for v in verdicts]) == headline


def test_a_run_without_a_verdict_still_has_its_row(tmp_path):
    meta = {"request": {"scenario": "combined"}, "reproduce": "failover-harness run --scenario combined"}
    report.write_error(tmp_path, meta, "UNTESTABLE", "boot failed: no shell | within 180s\nconsole tail")
    r = json.loads((tmp_path / "results.json").read_text())
    text = markdown.render([r])
    (row,) = table_rows(text)
    assert row[:3] == ["combined", "⚠️ UNTESTABLE", "boot failed: no shell \\| within 180s"]
    assert len(row) == 7  # as many cells as the header
    assert "- combined: boot failed" in text


def test_provenance_names_the_base_and_the_series(tmp_path):
    r = evaluated("run-crash-5-kills", tmp_path)
    r["provenance"] = {"source": "tree:/src/linux", "base": {"commit": "a" * 40, "describe": "v6.12-rc1"},
                       "head": "b" * 40, "patches": [
                           {"subject": "cachefiles: introduce object ondemand state", "status": "applied"},
                           {"subject": "cachefiles: add restore command", "status": "already-present"}]}
    text = markdown.render([r])
    assert "Tested on `v6.12-rc1` with 2 patch(es), head `bbbbbbbbbbbb`." in text
    assert "- cachefiles: add restore command (already-present)" in text
    assert "- cachefiles: introduce object ondemand state\n" in text


def test_runs_of_two_kernels_get_a_kernel_column(tmp_path):
    a = evaluated("run-crash-5-kills", tmp_path)
    b = {**a, "kernel": {**a["kernel"], "version": "6.13.0", "flavor": "debug"}}
    rows = table_rows(markdown.render([a, b]))
    assert [row[1] for row in rows] == ["6.12.117 (plain)", "6.13.0 (debug)"]
