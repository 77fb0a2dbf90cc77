"""A patch series in (an mbox, or a directory of patch files), applied with `git am`.

Each patch is checked before it is applied: one that applies goes in with `git am` (a commit of
its own, author and dates from the mail, so the same series on the same base gives the same
commit ids); one whose reverse applies is already in the base and is not applied again; one that
does neither stops the series with git's own message (exit code 2: the input is wrong).
"""
from __future__ import annotations

import email
import email.header
import email.policy
import mailbox
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import git
from ..errors import InputError

PATCH_FILE_SUFFIXES = (".patch", ".diff", ".mbox", ".eml")
_SUBJECT_TAG = re.compile(r"^\s*((re|fwd?):\s*)*(\[[^\]]*\]\s*)*", re.I)
# git's own readings (mailinfo.c, am.c, apply.c): where a mail's commit message ends and its
# patch begins; a header line; the file a plain unified diff (`diff -u`, no `diff --git`) changes
_PATCH_BREAK = re.compile(r"^(diff -|Index: |---[ \t]*$|--- \S)", re.M)
_HEADER = re.compile(rb"[!-9;-~]+:")
_GIT_DIFF = re.compile(r"^diff --git a/\S+ b/(\S+)$", re.M)
_UNIFIED_DIFF = re.compile(r"^--- (\S+).*\n\+\+\+ (\S+).*\n@@ ", re.M)


@dataclass(frozen=True)
class Patch:
    index: int  # 1-based position in the series
    subject: str  # without the [PATCH v2 3/5] tag
    message_id: str | None
    author: str
    files: tuple[str, ...]
    text: bytes  # the whole message, as `git am` reads it


@dataclass(frozen=True)
class PatchResult:
    index: int
    subject: str
    message_id: str | None
    status: str  # "applied", "already-present" or "failed"
    commit: str | None
    files: tuple[str, ...]
    message: str = ""  # git's, when it failed

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class SeriesError(InputError):
    """The series is not a series, or one of its patches does not apply."""

    def __init__(self, message: str, results: tuple[PatchResult, ...] = ()) -> None:
        super().__init__(message)
        self.results = results


def _header(msg: email.message.Message, name: str) -> str:
    value = msg.get(name)
    if value is None:
        return ""
    return " ".join(str(email.header.make_header(email.header.decode_header(str(value)))).split())


def _diff_files(body: str) -> tuple[str, ...]:
    """The files a git diff or a plain unified diff changes, as `git am` (-p1) names them."""
    unified = (new if new != "/dev/null" else old for old, new in _UNIFIED_DIFF.findall(body))
    return tuple(dict.fromkeys([*_GIT_DIFF.findall(body), *(name.partition("/")[2] or name for name in unified)]))


def commit_message(raw: bytes) -> str:
    """A patch mail's body up to its patch, where `git am` ends the commit message."""
    payload = email.message_from_bytes(raw, policy=email.policy.compat32).get_payload(decode=False)
    body = payload if isinstance(payload, str) else ""
    found = _PATCH_BREAK.search(body)
    return body[:found.start()] if found else body


def _to_patch(index: int, raw: bytes) -> Patch | None:
    """None for a message without a diff (a cover letter, a reply)."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    body = raw.decode("utf-8", errors="replace")
    files = _diff_files(body)
    if not files:
        return None
    return Patch(index=index, subject=_SUBJECT_TAG.sub("", _header(msg, "Subject")) or "(no subject)",
                 message_id=_header(msg, "Message-Id").strip("<>") or None, author=_header(msg, "From"),
                 files=files, text=raw)


def _is_mail(raw: bytes) -> bool:
    """git am's test (is_mail): a block of header lines, folded ones indented, up to a blank line."""
    lines = raw.lstrip(b"\r\n").split(b"\n\n", 1)[0].splitlines()
    return bool(lines) and _HEADER.match(lines[0]) is not None and \
        all(_HEADER.match(line) or line[:1] in (b" ", b"\t") for line in lines[1:])


def _messages(path: Path) -> list[bytes]:
    box = mailbox.mbox(str(path), create=False)
    try:
        found = [m.as_bytes(unixfrom=True) for m in box]
    finally:
        box.close()
    if found:
        return found
    raw = path.read_bytes()
    if _is_mail(raw):  # without an mbox's From_ line: one mail, which `git am` takes too
        return [raw]
    if raw.lstrip().startswith(b"diff --git"):
        raise SeriesError(f"{path}: a bare diff, not a mail; make patches with `git format-patch` or `b4 am`")
    return []


def _no_patch(path: Path) -> SeriesError:
    return SeriesError(f"{path}: no patch in it (an mbox as `git format-patch --stdout` or `b4 am` writes)")


def _all_messages(path: Path) -> list[bytes]:
    """The messages of an mbox file or of a directory of patch files (in name order)."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in PATCH_FILE_SUFFIXES)
        if not files:
            raise SeriesError(f"{path}: no patch files ({', '.join(PATCH_FILE_SUFFIXES)})")
    elif path.is_file():
        files = [path]
    else:
        raise SeriesError(f"{path}: no such file or directory")
    return [raw for f in files for raw in _messages(f)]


def load(path: Path) -> tuple[Patch, ...]:
    """The patches of an mbox file or of a directory of patch files (in name order)."""
    raws = _all_messages(path)
    patches = [p for p in (_to_patch(i, raw) for i, raw in enumerate(raws, 1)) if p is not None]
    if not patches:
        raise _no_patch(path)
    # renumber without the cover letter, as the series' own n/m does
    return tuple(Patch(i, p.subject, p.message_id, p.author, p.files, p.text) for i, p in enumerate(patches, 1))


@dataclass(frozen=True)
class ThreadRoot:
    """The message a reply to the series answers: its cover letter, or without one its first
    patch. Headers as sent (decoded), Message-Id and References without their angle brackets."""
    subject: str
    message_id: str | None
    references: tuple[str, ...]
    sender: str  # From: whom a reply goes to
    recipients: tuple[str, ...]  # To and Cc: whom a reply copies


_COVER_TAG = re.compile(r"^\s*\[[^\]]*\b0+/\d+\]")  # [PATCH v2 0/3]; a reply's "Re: [PATCH 0/3]" is not it
_MSGID = re.compile(r"<([^<>\s]+)>")


def _addresses(msg: email.message.Message, *names: str) -> tuple[str, ...]:
    return tuple(a for name in names for a in (x.strip() for x in _header(msg, name).split(",")) if a)


def thread_root(path: Path) -> ThreadRoot:
    """The cover letter of the series at `path` (an mbox or a directory), or its first patch."""
    raws = _all_messages(path)
    msgs = [email.message_from_bytes(raw, policy=email.policy.compat32) for raw in raws]
    cover = next((m for m in msgs if _COVER_TAG.match(_header(m, "Subject"))), None)
    root = cover or next((m for m, raw in zip(msgs, raws) if _diff_files(raw.decode("utf-8", errors="replace"))), None)
    if root is None:
        raise _no_patch(path)
    ids = _MSGID.findall(_header(root, "Message-Id"))
    return ThreadRoot(subject=_header(root, "Subject") or "(no subject)", message_id=ids[0] if ids else None,
                      references=tuple(_MSGID.findall(_header(root, "References"))),
                      sender=_header(root, "From"), recipients=_addresses(root, "To", "Cc"))


def _abort_am(tree: Path) -> None:
    rebase_apply = Path(git.check(tree, "rev-parse", "--git-path", "rebase-apply", timeout_s=30))
    if (tree / rebase_apply).exists():  # the path is relative to `tree` unless absolute
        git.run(tree, "am", "--abort", timeout_s=120)


def apply(tree: Path, patches: tuple[Patch, ...], work_dir: Path) -> tuple[PatchResult, ...]:
    """Apply in order on the checked-out `tree`; SeriesError names the first patch that fails."""
    _abort_am(tree)  # an interrupted earlier run may have left one in progress
    results: list[PatchResult] = []
    n = len(patches)
    for p in patches:
        mbox = work_dir / f"patch-{p.index:04d}.mbox"
        mbox.write_bytes(p.text)
        if git.run(tree, "apply", "--check", str(mbox), timeout_s=120).ok:
            am = git.run(tree, "am", "--quiet", "--committer-date-is-author-date", str(mbox))
            if am.ok:
                results.append(PatchResult(p.index, p.subject, p.message_id, "applied", git.head(tree), p.files))
                continue
            message = am.tail(8)
        elif git.run(tree, "apply", "--check", "--reverse", str(mbox), timeout_s=120).ok:
            results.append(PatchResult(p.index, p.subject, p.message_id, "already-present", None, p.files))
            continue
        else:
            # git am's own account of why (which hunk of which file)
            message = git.run(tree, "am", "--quiet", str(mbox)).tail(8)
        _abort_am(tree)
        results.append(PatchResult(p.index, p.subject, p.message_id, "failed", None, p.files, message))
        raise SeriesError(f"patch {p.index}/{n} \"{p.subject}\" does not apply (files: {', '.join(p.files)}):\n"
                          f"{message}", tuple(results))
    return tuple(results)
