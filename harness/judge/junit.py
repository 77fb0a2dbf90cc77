"""results.json -> JUnit XML, for CI dashboards: one <testsuite> per run, one <testcase> per check.

Every run has the same checks, whatever its verdict, so that a dashboard's history of a check
is continuous: the data (checksums, read errors, stalls), the failover (kills, restores,
re-deliveries), that the run completed, one test case per kernel finding (named by its title,
with its fingerprint; "kernel: console" passes when there is none), and the evidence the
scenario needs (skipped when it never showed: an INCONCLUSIVE run proves nothing about that
path, which is neither a pass nor a failure). A run without a verdict on the kernel (ERROR,
UNTESTABLE) is one test case in <error>.

The checks are checks.Check, read from results.json's `reason_checks` and `missing_checks`
(schema 3): each reason is filed under the check the verdict gave it, never by its words. A
results.json of an older schema has no checks: judge its run again (`failover-harness report DIR`).
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from typing import Any

from ..scenarios import SCENARIOS
from .checks import EVIDENCE_CHECKS, VERDICT_CHECKS, Check, by_slug
from .results import AnyResults, Results, is_judged, scenario_of


@dataclass(frozen=True)
class Case:
    name: str
    outcome: str  # "passed", "failure", "skipped", "error"
    message: str = ""
    detail: str = ""  # the element's text: every reason, the finding's first line


def filed(texts: list[str], checks: list[str]) -> dict[Check, list[str]]:
    """Texts (reasons or missing-evidence lines) under the checks results.json gives them."""
    out: dict[Check, list[str]] = {}
    for text, slug in zip(texts, checks, strict=True):
        out.setdefault(by_slug(slug), []).append(text)
    return out


def failed_cases(results: Results) -> dict[Check, Case]:
    """The failure test case of each failed check (the kernel's findings are cases of their own)."""
    return {check: Case(check.case, "failure", texts[0][:500], "\n".join(texts))
            for check, texts in filed(results["reasons"], results["reason_checks"]).items()}


def _needed(scenario: str | None) -> set[Check]:
    """The evidence the scenario asks for (by today's definition, as `report` judges with it)."""
    s = SCENARIOS.get(scenario or "")
    return {c for c in EVIDENCE_CHECKS if s is not None and getattr(s.needs, c.need or "")}


def _finding_cases(findings: list[dict[str, Any]]) -> list[Case]:
    """One case per kernel finding; the same bug reported twice is one test case: its history on
    a dashboard is that bug's."""
    seen = Counter(f["fingerprint"] for f in findings)
    first: dict[str, dict[str, Any]] = {}
    for f in findings:
        first.setdefault(f["fingerprint"], f)
    out = []
    for fp, f in first.items():
        times = f" (seen {seen[fp]} times)" if seen[fp] > 1 else ""
        out.append(Case(f"kernel: {f['title']} [{fp}]", "failure", f"{f['title']} [{fp}]{times}",
                        f"console.log:{f.get('line_no')}: {f.get('text', '')}\nframes: {' '.join(f.get('frames', []))}"))
    return out


def cases(results: AnyResults) -> list[Case]:
    """The test cases of one run."""
    if not is_judged(results):
        reasons = results.get("reasons") or [results["verdict"]]
        return [Case("run", "error", f"{results['verdict']}: {reasons[0]}"[:500], "\n".join(reasons))]
    failed = failed_cases(results)
    out = [failed.get(check, Case(check.case, "passed")) for check in VERDICT_CHECKS if check is not Check.SPLAT]
    findings = results["findings"]
    if not findings:
        out.append(Case(Check.SPLAT.case, "passed"))
    out += _finding_cases(findings)

    missing = filed(results["missing_evidence"], results["missing_checks"])
    needed = _needed(results["scenario"])
    for check in EVIDENCE_CHECKS:
        if lines := missing.get(check):
            out.append(Case(check.case, "skipped", lines[0][:500], "\n".join(lines)))
        elif check in needed:
            out.append(Case(check.case, "passed"))
    return out


def suite_name(results: AnyResults) -> str:
    return scenario_of(results) or "run"


def testsuite(results: AnyResults, name: str | None = None) -> ET.Element:
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


def _names(runs: list[AnyResults]) -> list[str]:
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


def render(results: AnyResults) -> str:
    """One run: a <testsuites> holding its <testsuite> (what CI tools expect at the top)."""
    return render_many([results])


def render_many(runs: list[AnyResults], name: str = "failover-harness", names: list[str] | None = None) -> str:
    """Several runs (a matrix, a shard, a submission) in one file; `names` the suites' (default:
    the scenarios, told apart by kernel and flavour, then numbered)."""
    top = ET.Element("testsuites", {"name": name})
    for results, suite_label in zip(runs, names or _names(runs), strict=True):
        top.append(testsuite(results, suite_label))
    for key in ("tests", "failures", "errors", "skipped"):
        top.set(key, str(sum(int(s.get(key, "0")) for s in top)))
    return _text(top)
