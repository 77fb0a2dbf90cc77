"""reply.eml: a submission's answer to its series, ready to send in reply to the cover letter.

Plain text wrapped at 72 columns, as the kernel's lists read mail: the outcome, what the
submission left of the default one when it was narrowed, the table of both sides of every
scenario, why each scenario that is not a plain pass is what it is, the kernel findings with
their titles and fingerprints (and what the known issues say of them), the one command that
reproduces it all, and a Tested-by: only when every scenario passes on the series with nothing
regressed, inconclusive or untestable (Submission.tested). It threads under the cover letter
(In-Reply-To and References from its Message-Id) and goes to its sender and recipients; the
harness sends nothing: CI or a person does.
"""
from __future__ import annotations

import email.policy
import email.utils
import shlex
import textwrap
from datetime import datetime, timezone
from email.message import EmailMessage
from typing import Sequence

from .. import __version__
from ..judge.known import note
from ..judge.results import AnyResults
from ..judge.sides import Outcome, Side, Submission, submission_method
from ..kernel.series import ThreadRoot

WIDTH = 72
MSGID_DOMAIN = "failover-harness.invalid"
# Headers are left whole up to RFC 5322's hard limit: folded at 78 columns, a Message-Id longer
# than a line would be turned into an encoded word, which no mail client threads on. The body
# is ours, wrapped at WIDTH.
POLICY = email.policy.default.clone(max_line_length=998)


def paragraph(text: str, first: str = "", rest: str = "") -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=first, subsequent_indent=rest, break_on_hyphens=False) or [""]


def columns(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows as left-aligned columns, two spaces apart (the widest a scenario's row can be fits
    WIDTH: tests/unit/test_reply.py)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def shell_lines(command: str, indent: str = "  ") -> list[str]:
    """`command` broken between its words with backslash-newline, each line at most WIDTH, as a
    shell reads it back. A word too long for a line of its own is broken inside too, the rest
    at column 0 (where the shell joins it back), if it needs no quotes: within quotes the
    backslash would stay."""
    lines: list[str] = []
    line = indent
    for word in (shlex.quote(w) for w in shlex.split(command)):
        sep = " " if line.strip() else ""
        if len(line) + len(sep) + len(word) + 2 <= WIDTH:  # 2: room for " \"
            line += sep + word
            continue
        if line.strip():
            lines.append(line + " \\")
            line = indent * 2
        while len(line) + len(word) + 2 > WIDTH and shlex.quote(word) == word:
            room = WIDTH - len(line) - 1
            lines.append(line + word[:room] + "\\")
            line, word = "", word[room:]
        line += word
    return lines + [line]


def _tested_on(runs: list[AnyResults]) -> str:
    """The base, the series and the kernel, from the first run that records them."""
    prov = next((r["provenance"] for r in runs if r.get("provenance")), None) or {}
    base = prov.get("base") or {}
    commit = (base.get("commit") or "")[:12]
    name = base.get("describe") or commit or prov.get("source") or "?"
    said = f"Tested on {name}" + (f" ({commit})" if commit and commit != name else "")
    if patches := prov.get("patches"):
        statuses = [p.get("status", "?") for p in patches]
        how = "all applied" if set(statuses) == {"applied"} else ", ".join(f"{statuses.count(s)} {s}"
                                                                            for s in dict.fromkeys(statuses))
        said += f" with {len(patches)} patch(es), {how}" + (f", head {prov['head'][:12]}" if prov.get("head") else "")
    built = next((r for r in runs if (r.get("kernel") or {}).get("version")), None)
    if built:
        k = built["kernel"]
        said += f"; kernel {k['version']} ({k.get('flavor') or '?'}) under {built.get('accel') or '?'}"
    return said + "."


def body(sub: Submission, *, root: ThreadRoot, reproduce: str, mbox_name: str, max_runs: int,
         tested_by: str | None, scope: str | None = None) -> str:
    """The reply's text; `scope`: what the submission left of the default one, said first."""
    runs = sub.labelled_runs()
    out = paragraph(f"failover-harness ran the cachefiles on-demand failover scenarios on this series: "
                    f"{sub.headline}.") + [""]
    if scope:
        out += paragraph(scope) + [""]
    out += paragraph(_tested_on([r.results for _, side, r in runs if side is Side.SERIES]
                                or [r.results for _, _, r in runs])) + [""]
    out += columns([("scenario", "base", "series", "outcome")]
                   + [(c.scenario, c.base.cell, c.series.cell, f"{c.outcome}" + (" (known)" if sub.is_known(c) else ""))
                      for c in sub.comparisons]) + [""]
    if notes := [c for c in sub.comparisons if c.outcome is not Outcome.PASS]:
        for c in notes:
            out += paragraph(f"{c.scenario}: {c.explanation()}.", "- ", "  ")
        out.append("")
    if findings := sub.findings():
        out += ["Kernel findings (title [fingerprint]: the same bug, the same one):"]
        for f in findings:
            said = note(f.label, f.issue)
            out += paragraph(f"{f.title} [{f.fingerprint}]", "- ", "  ")
            out += paragraph(f"in {f.where_text}" + (f"; {said}" if said else ""), "  ", "  ")
        out.append("")
    if checks := sub.checks_labelled():
        out += ["Known issues met (failed checks):"]
        for slug, label, issue in checks:
            out += paragraph(f"{slug}: {note(label, issue)}", "- ", "  ")
        out.append("")
    fetch = f" (b4 am -o - {root.message_id} > {mbox_name})" if root.message_id else ""
    out += paragraph(f"Reproduce locally, with the series saved as {mbox_name}{fetch}:") + [""]
    out += shell_lines(reproduce) + [""]
    out += paragraph(submission_method(max_runs)) + [""]
    if tested_by and sub.tested:
        out += [f"Tested-by: {tested_by}", ""]
    out += ["-- ", f"failover-harness {__version__}"]
    return "\n".join(out) + "\n"


def message(text: str, root: ThreadRoot, sender: str, date: datetime | None = None) -> EmailMessage:
    """`text` as a reply to `root`: to its sender, copying its recipients, threaded under it."""
    m = EmailMessage(policy=POLICY)
    m["From"] = sender
    if root.sender:
        m["To"] = root.sender
    if cc := [r for r in root.recipients if r != root.sender]:
        m["Cc"] = ", ".join(cc)
    m["Subject"] = root.subject if root.subject.lower().startswith("re:") else f"Re: {root.subject}"
    m["Date"] = email.utils.format_datetime(date or datetime.now(timezone.utc))
    m["Message-ID"] = email.utils.make_msgid(domain=MSGID_DOMAIN)
    if root.message_id:
        m["In-Reply-To"] = f"<{root.message_id}>"
        m["References"] = " ".join(f"<{i}>" for i in dict.fromkeys((*root.references, root.message_id)))
    m.set_content(text, cte="7bit" if text.isascii() else "8bit")
    return m
