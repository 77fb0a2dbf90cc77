"""The results of one or more runs (one per scenario) -> a short Markdown report, ready to paste
into a reply to a patch series or into a CI job's summary.

Short on purpose: the verdict of each scenario in one table, then only what needs reading (why
a run failed, which evidence never showed, each kernel finding once with its fingerprint), and
one command that reproduces it all locally. The numbers behind it are in each run's
results.json and summary.txt.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

from .checks import Status
from .known import note
from .results import AnyResults, is_judged, scenario_of
from .sides import CheckState, Side, Submission, submission_method

VERDICT_MARK = {Status.PASS: "✅ PASS", Status.FAIL: "❌ FAIL", Status.INCONCLUSIVE: "⚠️ INCONCLUSIVE",
                Status.UNTESTABLE: "⚠️ UNTESTABLE", Status.ERROR: "⛔ ERROR"}
# the worst verdict of a set decides the headline, in this order
SEVERITY = (Status.FAIL, Status.ERROR, Status.UNTESTABLE, Status.INCONCLUSIVE, Status.PASS)


def _cell(text: object) -> str:
    """Safe inside a table cell: no pipe or newline breaks the row."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    """Inline code that survives backticks in the text."""
    fence = "``" if "`" in text else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def overall(runs: list[AnyResults]) -> Status:
    verdicts = {Status(r["verdict"]) for r in runs}
    return next((v for v in SEVERITY if v in verdicts), Status.ERROR)


def _scenario(r: AnyResults) -> str:
    return scenario_of(r) or "?"


def _kernel(r: AnyResults) -> str:
    k = r.get("kernel", {})
    flavor = k.get("flavor") or r.get("request", {}).get("flavor")
    return " ".join(x for x in (k.get("version") or "?", f"({flavor})" if flavor else "") if x)


def _row(r: AnyResults, with_kernel: bool, label: str | None = None) -> str:
    head = [label or _scenario(r)] + ([_kernel(r)] if with_kernel else []) + [VERDICT_MARK[Status(r["verdict"])]]
    if not is_judged(r):  # ERROR or UNTESTABLE: no run to count
        reason = (r.get("reasons") or [""])[0].splitlines()[0] if r.get("reasons") else ""
        return "| " + " | ".join(_cell(x) for x in head + [reason[:80]] + ["–"] * 4) + " |"
    ev = r["evidence"]
    faults = []
    if r.get("kills"):
        faults.append(f"{r['kills']} kills ({r.get('in_flight_share', 0):.0%} in flight)")
    if ev.get("fd_closes"):
        faults.append(f"{ev['fd_closes']} fd closes")
    if r.get("crash_points"):
        faults.append(f"{sum(p['hits'] for p in r['crash_points'].values())} crash points")
    recovery = f"{ev.get('restores', 0)} restores, {ev.get('redelivered', 0)} re-delivered, {ev.get('reopens', 0)} reopens"
    rd = r.get("readers", {})
    data = f"{rd.get('files_verified', 0)} files, {r.get('mismatches', 0)} mismatches, {r.get('read_errors', 0)} errors"
    stall = r.get("max_stall_s")
    stall_text = "–" if stall is None else f"{stall:.1f} s / {r.get('stall_bound_s', 0):g} s"
    findings = len(r.get("findings", []))
    return "| " + " | ".join(_cell(x) for x in head + [", ".join(faults) or "none", recovery, data,
                                                       stall_text, str(findings)]) + " |"


def _findings(runs: list[AnyResults]) -> list[str]:
    """Each kernel finding once, by fingerprint, with the scenarios it showed in."""
    where: dict[str, list[str]] = {}
    title: dict[str, str] = {}
    count: Counter[str] = Counter()
    for r in runs:
        for f in r["findings"] if is_judged(r) else []:
            fp = f["fingerprint"]
            title.setdefault(fp, f["title"])
            count[fp] += 1
            if _scenario(r) not in where.setdefault(fp, []):
                where[fp].append(_scenario(r))
    return [f"- **{title[fp]}** ({_code(fp)}), {count[fp]}x in {', '.join(where[fp])}" for fp in title]


def _provenance(runs: list[AnyResults]) -> list[str]:
    """What was tested: the base and the series, from the first run that records it."""
    prov = next((r["provenance"] for r in runs if r.get("provenance")), None)
    if not prov:
        return []
    base = prov.get("base") or {}
    name = base.get("describe") or (base.get("commit") or "")[:12] or prov.get("source") or "?"
    patches = prov.get("patches") or []
    lines = [f"Tested on {_code(name)}" + (f" with {len(patches)} patch(es)" if patches else "")
             + (f", head {_code(prov['head'][:12])}" if prov.get("head") else "") + "."]
    for p in patches[:30]:
        status = p.get("status", "?")
        mark = "" if status == "applied" else f" ({status})"
        lines.append(f"- {_cell(p.get('subject', '?'))}{mark}")
    if len(patches) > 30:
        lines.append(f"- … and {len(patches) - 30} more")
    return lines


def render(runs: list[AnyResults], *, title: str = "failover-harness", reproduce: str | None = None) -> str:
    """The report of `runs`. `reproduce` is the one command that reruns them all (a submission's
    command line); without it, each run's own command is listed."""
    # a kernel column only when the runs differ in it (a run that never built one has no say)
    kernels = {(r["kernel"]["version"], r["kernel"].get("flavor")) for r in runs if r.get("kernel", {}).get("version")}
    with_kernel = len(kernels) > 1
    out = [f"### {title}: {VERDICT_MARK[overall(runs)]}", ""]
    if (built := [r for r in runs if r.get("kernel", {}).get("version")]) and not with_kernel:
        out += [f"Kernel {_kernel(built[0])}, {built[0].get('accel') or '?'}"
                f"{', harness ' + built[0]['harness_version'] if built[0].get('harness_version') else ''}.", ""]
    if prov := _provenance(runs):
        out += prov + [""]
    out += _run_table(runs, with_kernel, "scenario", [_scenario(r) for r in runs])
    out += _problems(runs, [_scenario(r) + (f" ({_kernel(r)})" if with_kernel else "") for r in runs])
    if findings := _findings(runs):
        out += [FINDINGS_HEADING, ""] + findings + [""]
    return "\n".join(out + _reproduce([reproduce] if reproduce else [r.get("reproduce", "") for r in runs]))


FINDINGS_HEADING = "**Kernel findings** (title, fingerprint: the same bug has the same fingerprint)"


def _run_table(runs: list[AnyResults], with_kernel: bool, what: str, labels: list[str]) -> list[str]:
    """A row a run, named by `labels`, under a header whose first column is `what`."""
    head = [what] + (["kernel"] if with_kernel else []) + ["verdict", "faults", "failover", "reads",
                                                          "max stall / bound", "findings"]
    return (["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            + [_row(r, with_kernel, label) for r, label in zip(runs, labels)] + [""])


def _problems(runs: list[AnyResults], labels: list[str]) -> list[str]:
    """Why each run that did not PASS did not: its reasons and the evidence it missed."""
    problems = []
    for r, label in zip(runs, labels):
        for reason in r.get("reasons", []):
            problems.append(f"- {label}: {_cell(reason.splitlines()[0] if reason else reason)}")
        for missing in r["missing_evidence"] if is_judged(r) else []:
            problems.append(f"- {label}: missing evidence: {_cell(missing)}")
    return ["**Why**", ""] + problems + [""] if problems else []


def _reproduce(commands: list[str]) -> list[str]:
    return ["**Reproduce**", "", "```sh", *dict.fromkeys(c for c in commands if c), "```", ""]


# -- a submission: each scenario on the base and on the series (judge/sides.py) ---------------------

STATE_MARK = {CheckState.SUCCESS: "✅", CheckState.WARNING: "⚠️", CheckState.FAIL: "❌"}


def render_submission(sub: Submission, *, title: str, reproduce: str, max_runs: int, scope: str | None = None) -> str:
    """The report of a two-sided submission: what it left of the default one (`scope`), a row a
    scenario (both sides, the outcome, why), the findings labelled by the known issues, every run,
    and the one command that reproduces it all."""
    out = [f"### {title}: {STATE_MARK[sub.worst_state]} {sub.headline}", ""]
    if scope:
        out += [scope, ""]
    runs = sub.labelled_runs()
    if prov := _provenance([r.results for _, side, r in runs if side is Side.SERIES]):
        out += prov + [""]
    out += [submission_method(max_runs)]
    if reused := sum(c.base.reused for c in sub.comparisons):
        out[-1] += f" {reused} base run(s) were reused from an earlier submission's cache."
    out += ["", "| scenario | base | series | outcome | why |", "|---|---|---|---|---|"]
    for c in sub.comparisons:
        known = " (known)" if sub.is_known(c) else ""
        out.append("| " + " | ".join(_cell(x) for x in (c.scenario, c.base.cell, c.series.cell,
                                                         f"{STATE_MARK[sub.state(c)]} {c.outcome}{known}",
                                                         c.explanation())) + " |")
    out.append("")
    if findings := sub.findings():
        out += [FINDINGS_HEADING, ""]
        for f in findings:
            said = note(f.label, f.issue)
            out.append(f"- **{_cell(f.title)}** ({_code(f.fingerprint)}), {f.where_text}" + (f"; {said}" if said else ""))
        out.append("")
    if checks := sub.checks_labelled():
        out += ["**Known issues met** (failed checks)", ""]
        out += [f"- {_code(slug)}: {note(label, issue)}" for slug, label, issue in checks] + [""]
    labels, results = [label for label, _, _ in runs], [r.results for _, _, r in runs]
    out += ["**Every run**", ""] + _run_table(results, False, "run", labels) + _problems(results, labels)
    return "\n".join(out + _reproduce([reproduce]))
