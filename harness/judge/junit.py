"""results.json -> JUnit XML, for CI dashboards: one <testsuite> per run, one <testcase> per check.

Every run has the same checks, whatever its verdict, so that a dashboard's history of a check
is continuous: the data (checksums, read errors, stalls), the failover (kills, restores,
re-deliveries), that the run completed, one test case per kernel finding (named by its title,
with its fingerprint; "kernel: console" passes when there is none), and the evidence the
scenario needs (skipped when it never showed: an INCONCLUSIVE run proves nothing about that
path, which is neither a pass nor a failure). A run without a verdict on the kernel (ERROR,
UNTESTABLE) is one test case in <error>.

The verdict's reasons are the source of the failures: each is filed under the check it belongs
to, and a reason that no check claims is kept as "verdict: other", never dropped.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass

from ..scenarios import SCENARIOS

# (test case, phrases of the verdict's reasons that belong to it: see verdict.failures)
CHECKS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("data: checksums", ("checksum mismatch", "never read back correctly", "no file was read back")),
    ("data: read errors", ("read error(s)",)),
    ("data: stalls", ("a read stalled",)),
    ("failover: every kill killed the daemon", ("kills were made", "did not kill a daemon")),
    ("failover: every death restored and served again", ("not followed by a successful restore",
                                                         "not followed by requests served again")),
    ("failover: held requests re-delivered", ("that no later incarnation received again",
                                              "were never delivered again")),
    ("daemon: no busy loop on empty wake-ups", ("empty wake-ups",)),
    ("run: completed", ("run aborted",)),
)
KERNEL_REASON = "kernel console:"  # its findings are test cases of their own
OTHER = "verdict: other"

# (test case, phrase of the missing-evidence line, the scenario's need that asks for it)
EVIDENCE: tuple[tuple[str, str, str], ...] = (
    ("evidence: kills on a request in flight", "hit a request in flight", "in_flight_share"),
    ("evidence: held requests re-delivered", "re-delivered after a restore", "redelivered"),
    ("evidence: anon fds closed", "anon fds closed", "fd_closes"),
    ("evidence: reopens in the kernel trace", "reopens in the kernel trace", "reopens"),
    ("evidence: READs on reopened objects", "READs delivered on a reopened object", "reads_after_reopen"),
    ("evidence: every crash point reached", "crash points never reached", "crash_point_hits"),
)
EVIDENCE_OTHER = "evidence: other"


@dataclass(frozen=True)
class Case:
    name: str
    outcome: str  # "passed", "failure", "skipped", "error"
    message: str = ""
    detail: str = ""  # the element's text: every reason, the finding's first line


def classify(reason: str) -> str:
    """The check a verdict reason belongs to."""
    for name, phrases in CHECKS:
        if any(p in reason for p in phrases):
            return name
    return "kernel" if reason.startswith(KERNEL_REASON) else OTHER


def _needed(scenario: str | None) -> set[str]:
    """The evidence the scenario asks for (by today's definition, as `report` judges with it)."""
    s = SCENARIOS.get(scenario or "")
    return {need for _, _, need in EVIDENCE if s is not None and getattr(s.needs, need)}


def cases(results: dict) -> list[Case]:
    """The test cases of one run."""
    verdict = results.get("verdict", "")
    if verdict not in ("PASS", "FAIL", "INCONCLUSIVE"):
        reasons = results.get("reasons") or [verdict]
        return [Case("run", "error", f"{verdict}: {reasons[0]}"[:500], "\n".join(reasons))]
    filed: dict[str, list[str]] = {}
    for reason in results.get("reasons", []):
        filed.setdefault(classify(reason), []).append(reason)
    out = []
    for name, _ in CHECKS:
        if reasons := filed.get(name):
            out.append(Case(name, "failure", reasons[0][:500], "\n".join(reasons)))
        else:
            out.append(Case(name, "passed"))
    if other := filed.get(OTHER):
        out.append(Case(OTHER, "failure", other[0][:500], "\n".join(other)))

    findings = results.get("findings", [])
    if not findings:
        out.append(Case("kernel: console", "passed"))
    # the same bug reported twice is one test case: its history on a dashboard is that bug's
    seen = Counter(f["fingerprint"] for f in findings)
    first: dict[str, dict] = {}
    for f in findings:
        first.setdefault(f["fingerprint"], f)
    for fp, f in first.items():
        times = f" (seen {seen[fp]} times)" if seen[fp] > 1 else ""
        out.append(Case(f"kernel: {f['title']} [{fp}]", "failure", f"{f['title']} [{fp}]{times}",
                        f"console.log:{f.get('line_no')}: {f.get('text', '')}\nframes: {' '.join(f.get('frames', []))}"))

    missing = list(results.get("missing_evidence", []))
    needed = _needed(results.get("scenario"))
    for name, phrase, need in EVIDENCE:
        lines = [m for m in missing if phrase in m]
        for m in lines:
            missing.remove(m)
        if lines:
            out.append(Case(name, "skipped", lines[0][:500], "\n".join(lines)))
        elif need in needed:
            out.append(Case(name, "passed"))
    if missing:
        out.append(Case(EVIDENCE_OTHER, "skipped", missing[0][:500], "\n".join(missing)))
    return out


def suite_name(results: dict) -> str:
    return results.get("scenario") or results.get("request", {}).get("scenario") or "run"


def testsuite(results: dict, name: str | None = None) -> ET.Element:
    """One run as a <testsuite>; `name` defaults to the scenario."""
    name = name or suite_name(results)
    cs = cases(results)
    timing = results.get("timing", {})
    suite = ET.Element("testsuite", {
        "name": name,
        "tests": str(len(cs)),
        "failures": str(sum(c.outcome == "failure" for c in cs)),
        "errors": str(sum(c.outcome == "error" for c in cs)),
        "skipped": str(sum(c.outcome == "skipped" for c in cs)),
        "time": f"{float(timing.get('total_s') or 0):.1f}",
    })
    props = ET.SubElement(suite, "properties")
    kernel = results.get("kernel", {})
    for key, value in (("verdict", results.get("verdict")), ("kernel", kernel.get("version")),
                       ("kernel_source", kernel.get("source")), ("flavor", kernel.get("flavor")),
                       ("accel", results.get("accel")), ("reproduce", results.get("reproduce")),
                       ("harness_version", results.get("harness_version"))):
        if value is not None:
            ET.SubElement(props, "property", {"name": key, "value": str(value)})
    for c in cs:
        case = ET.SubElement(suite, "testcase", {"classname": f"failover-harness.{name}", "name": c.name, "time": "0"})
        if c.outcome != "passed":
            tag = {"failure": "failure", "skipped": "skipped", "error": "error"}[c.outcome]
            element = ET.SubElement(case, tag, {"message": c.message})
            if tag != "skipped":
                element.set("type", results.get("verdict", ""))
            element.text = c.detail or None
    return suite


def _names(runs: list[dict]) -> list[str]:
    """Scenario names, with the kernel and flavour added where two runs would share one."""
    base = [suite_name(r) for r in runs]
    names = []
    for r, b in zip(runs, base):
        if base.count(b) > 1:
            k = r.get("kernel", {})
            b = f"{b} [{k.get('version') or k.get('source') or '?'}, {k.get('flavor') or r.get('request', {}).get('flavor', '?')}]"
        names.append(b)
    counts: dict[str, int] = {}
    for i, n in enumerate(names):  # still equal (the same cell twice): number them
        counts[n] = counts.get(n, 0) + 1
        if names.count(n) > 1:
            names[i] = f"{n} #{counts[n]}"
    return names


def _text(element: ET.Element) -> str:
    ET.indent(element)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(element, encoding="unicode") + "\n"


def render(results: dict) -> str:
    """One run: a <testsuites> holding its <testsuite> (what CI tools expect at the top)."""
    return render_many([results])


def render_many(runs: list[dict], name: str = "failover-harness") -> str:
    """Several runs (a matrix, a shard, a submission) in one file."""
    top = ET.Element("testsuites", {"name": name})
    for results, suite_label in zip(runs, _names(runs)):
        top.append(testsuite(results, suite_label))
    for key in ("tests", "failures", "errors", "skipped"):
        top.set(key, str(sum(int(s.get(key, "0")) for s in top)))
    return _text(top)
