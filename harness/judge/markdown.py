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
from .results import AnyResults, is_judged, scenario_of

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


def _row(r: AnyResults, with_kernel: bool) -> str:
    head = [_scenario(r)] + ([_kernel(r)] if with_kernel else []) + [VERDICT_MARK[Status(r["verdict"])]]
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
    head = ["scenario"] + (["kernel"] if with_kernel else []) + ["verdict", "faults", "failover", "reads",
                                                                "max stall / bound", "findings"]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += [_row(r, with_kernel) for r in runs]
    out.append("")

    problems = []
    for r in runs:
        label = _scenario(r) + (f" ({_kernel(r)})" if with_kernel else "")
        for reason in r.get("reasons", []):
            problems.append(f"- {label}: {_cell(reason.splitlines()[0] if reason else reason)}")
        for missing in r["missing_evidence"] if is_judged(r) else []:
            problems.append(f"- {label}: missing evidence: {_cell(missing)}")
    if problems:
        out += ["**Why**", ""] + problems + [""]
    if findings := _findings(runs):
        out += ["**Kernel findings** (title, fingerprint: the same bug has the same fingerprint)", ""] + findings + [""]

    out += ["**Reproduce**", "", "```sh"]
    if reproduce:
        out.append(reproduce)
    else:
        out += list(dict.fromkeys(r.get("reproduce", "") for r in runs if r.get("reproduce")))
    out += ["```", ""]
    return "\n".join(out)
