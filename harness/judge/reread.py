"""The data read back at the end of a run, from the cache files alone (guest_scripts/endcheck.py).

Every image's first-round fsid is mounted again after `drop_caches`: its cache file was filled
while the daemon was being killed and its anon fds closed. Each file must read back as the
dataset has it, and the kernel must not have needed the daemon for it: a READ delivered, between
the re-read's trace marks, for an object the re-read opened means the cache file did not hold
what the daemons wrote through their anon fds (or the kernel threw it away on the reopen).
"""
from __future__ import annotations

from dataclasses import dataclass

from guest_scripts.contract import REREAD_MARK, EndOfRun
from .ledger import OPCODES
from .trace import TraceEvent

OPEN, READ = 0, 2
assert OPCODES[OPEN] == "OPEN" and OPCODES[READ] == "READ"


@dataclass(frozen=True)
class Reread:
    ran: bool  # the end check got to it (its marks are in the trace)
    files: int  # files read back
    mismatches: tuple[str, ...]  # "image/path: why"
    errors: tuple[str, ...]  # a mount, read or umount that failed
    opened: int  # objects the re-read opened (OPENs delivered between the marks)
    reads_needed: tuple[str, ...]  # READs delivered for them: "msg_id 7 object_id 3 off 0x0 len 0x1000"

    def failures(self) -> list[str]:
        out = [f"{len(self.mismatches)} file(s) read back wrong, first {self.mismatches[0]}"] if self.mismatches else []
        out += self.errors
        if self.reads_needed:
            out.append(f"{len(self.reads_needed)} READ(s) the cache files should have made needless, "
                       f"first {self.reads_needed[0]}")
        return out


def window(events: list[TraceEvent]) -> list[TraceEvent] | None:
    """The events between the re-read's marks; None without both marks."""
    begin = next((i for i, e in enumerate(events) if e.event == "mark" and e.fields.get(REREAD_MARK) == 1), None)
    if begin is None:
        return None
    end = next((i for i, e in enumerate(events) if i > begin and e.event == "mark" and e.fields.get(REREAD_MARK) == 0),
               None)
    return None if end is None else events[begin + 1:end]


def judge(end: EndOfRun | None, manifest: dict[str, dict[str, str]], events: list[TraceEvent]) -> Reread:
    inside = window(events)
    if end is None or inside is None:
        return Reread(False, 0, (), tuple(end.reread_errors) if end else (), 0, ())
    mismatches = []
    for image, files in sorted(manifest.items()):
        got = end.reread.get(image)
        if got is None:
            continue  # its mount failed: one of the errors
        for path, expected in sorted(files.items()):
            if path not in got:
                mismatches.append(f"{image}/{path}: not found")
            elif got[path] != expected:
                mismatches.append(f"{image}/{path}: sha256 {got[path][:12]}, expected {expected[:12]}")
    delivered = [e for e in inside if e.event == "deliver" and e.fields.get("ret", 0) > 0]
    opened = {e.fields.get("object_id") for e in delivered if e.fields.get("opcode") == OPEN}
    reads = [f"msg_id {e.fields.get('msg_id')} object_id {e.fields.get('object_id')} off {e.fields.get('a', 0):#x}"
             f" len {e.fields.get('b', 0):#x}"
             for e in delivered if e.fields.get("opcode") == READ and e.fields.get("object_id") in opened]
    return Reread(True, sum(len(f) for f in end.reread.values()), tuple(mismatches), tuple(end.reread_errors),
                  len(opened), tuple(reads))
