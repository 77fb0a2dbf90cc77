"""Kconfig fragments as values: parse, merge, and check what survived olddefconfig.

Pure functions, except `explain_drops`, which reads Kconfig files to say why a symbol dropped:
a symbol asked for by a fragment and silently vetoed by a dependency is the classic way for a
small config to test nothing (EROFS_FS vanishes without MISC_FILESYSTEMS).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

KCONFIG_DIR = Path(__file__).resolve().parents[2] / "kconfigs"
# flavour -> the fragments merged, in order, on top of tinyconfig
FLAVORS: dict[str, tuple[str, ...]] = {
    "plain": ("vm-base.config", "ondemand.config"),
    "debug": ("vm-base.config", "ondemand.config", "debug.config"),
}


def flavor_fragments(flavor: str) -> tuple["Fragment", ...]:
    return tuple(Fragment.load(KCONFIG_DIR / name) for name in FLAVORS[flavor])


_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


@dataclass(frozen=True)
class Fragment:
    name: str
    text: str

    @classmethod
    def load(cls, path: Path) -> "Fragment":
        return cls(path.name, path.read_text())

    @property
    def symbols(self) -> dict[str, str]:
        return parse_config(self.text)


@dataclass(frozen=True)
class Dropped:
    symbol: str
    wanted: str
    got: str  # "n" when absent or unset
    fragment: str


def parse_config(text: str) -> dict[str, str]:
    """`CONFIG_X=v` and `# CONFIG_X is not set` (as "n"); later lines win, as in Kconfig."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if m := _SET.match(line):
            values[m.group(1)] = m.group(2)
        elif m := _UNSET.match(line):
            values[m.group(1)] = "n"
    return values


def merge(fragments: Iterable[Fragment]) -> str:
    """One fragment to append to a base .config; each part names where it came from."""
    return "".join(f"# --- {f.name}\n{f.text.rstrip()}\n" for f in fragments)


def fingerprint(fragments: Iterable[Fragment], *extra: str) -> str:
    h = hashlib.sha256()
    for part in (*extra, merge(fragments)):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def find_drops(fragments: Iterable[Fragment], final: Mapping[str, str]) -> list[Dropped]:
    """Every symbol a fragment asked for whose value olddefconfig did not keep."""
    drops = []
    for frag in fragments:
        for symbol, wanted in frag.symbols.items():
            got = final.get(symbol, "n")
            if _normalise(got) != _normalise(wanted):
                drops.append(Dropped(symbol, wanted, got, frag.name))
    return drops


def _normalise(value: str) -> str:
    return value.strip('"')


# -- why a symbol dropped: its dependencies, read from the Kconfig files ----------------------

_CONFIG_LINE = re.compile(r"^\s*(?:menu)?config\s+([A-Za-z0-9_]+)\s*$")
_BLOCK_END = re.compile(r"^\s*(?:(?:menu)?config|choice|endchoice|menu|endmenu|if|endif|source|comment)\b")
_HELP = re.compile(r"^\s*(?:---)?help(?:---)?\s*$")
_DEPENDS = re.compile(r"^\s*depends\s+on\s+(.+?)\s*(?:#.*)?$")
_SELECT = re.compile(r"^\s*select\s+([A-Za-z0-9_]+)(?:\s+if\s+(.+?))?\s*(?:#.*)?$")
# `if`/`endif` blocks start in column 0 by kernel convention; indented lines are help text
_IF = re.compile(r"^if\s+(.+?)\s*(?:#.*)?$")
_ENDIF = re.compile(r"^endif\b")
_SOURCE = re.compile(r'^\s*(?:o?r?source)\s+"([^"]+)"')
_WORD = re.compile(r"\b[A-Z][A-Z0-9_]+\b")


@dataclass(frozen=True)
class Condition:
    where: str  # Kconfig file, relative to the tree
    kind: str  # "depends on", "if", or "selected by <SYMBOL>"
    expr: str


@dataclass(frozen=True)
class _Block:
    name: str
    where: str
    line: int  # index of the `config` line in its file
    body: tuple[str, ...]  # up to the help text or the next entry


def _kconfig_files(tree: Path, arch: str) -> dict[str, list[str]]:
    """Every Kconfig file but the other architectures', as relative path -> lines."""
    files = {}
    for path in sorted(tree.rglob("Kconfig*")):
        rel = str(path.relative_to(tree))
        if path.is_file() and not (rel.startswith("arch/") and not rel.startswith(f"arch/{arch}/")):
            files[rel] = path.read_text(errors="replace").splitlines()
    return files


def _blocks(files: dict[str, list[str]]) -> list[_Block]:
    blocks = []
    for rel, lines in files.items():
        for i, line in enumerate(lines):
            if m := _CONFIG_LINE.match(line):
                body = []
                for entry in lines[i + 1:]:
                    if _BLOCK_END.match(entry) or _HELP.match(entry):
                        break
                    body.append(entry)
                blocks.append(_Block(m.group(1), rel, i, tuple(body)))
    return blocks


def _enclosing_ifs(lines: list[str], upto: int) -> list[str]:
    stack: list[str] = []
    for line in lines[:upto]:
        if m := _IF.match(line):
            stack.append(m.group(1))
        elif _ENDIF.match(line) and stack:
            stack.pop()
    return stack


def _source_conditions(rel: str, files: dict[str, list[str]]) -> list[Condition]:
    """The `if` blocks around the `source` lines that pull `rel` in (one level up)."""
    found = []
    for where, lines in files.items():
        for i, line in enumerate(lines):
            m = _SOURCE.match(line)
            if m and m.group(1) == rel:
                found += [Condition(where, "if", e) for e in _enclosing_ifs(lines, i)]
    return found


def conditions_for(symbol: str, files: dict[str, list[str]], blocks: list[_Block]) -> list[Condition]:
    """What keeps `symbol` off (its `depends on`, the `if` blocks around its definition and
    around the file's `source` line) and what forces it on (`select` lines)."""
    name = symbol.removeprefix("CONFIG_")
    found: list[Condition] = []
    for b in blocks:
        if b.name == name:
            found += [Condition(b.where, "depends on", d.group(1)) for line in b.body if (d := _DEPENDS.match(line))]
            found += [Condition(b.where, "if", e) for e in _enclosing_ifs(files[b.where], b.line)]
            found += _source_conditions(b.where, files)
        for line in b.body:
            if (m := _SELECT.match(line)) and m.group(1) == name:
                found.append(Condition(b.where, f"selected by {b.name}", m.group(2) or "always"))
    return found


def explain_drops(tree: Path, drops: list[Dropped], final: Mapping[str, str], arch: str = "x86") -> str:
    """A report a maintainer can act on: each dropped symbol, then each condition with the
    values its symbols ended up with."""
    files = _kconfig_files(tree, arch)
    blocks = _blocks(files)
    out = []
    for d in drops:
        out.append(f"{d.symbol}: {d.fragment} asks for {d.wanted}, olddefconfig left {d.got}")
        for c in conditions_for(d.symbol, files, blocks):
            if c.kind.startswith("selected by") and final.get("CONFIG_" + c.kind.split()[-1], "n") == "n":
                continue  # a selector that is off is not why
            words = _WORD.findall(c.expr) + ([c.kind.split()[-1]] if c.kind.startswith("selected") else [])
            values = ", ".join(f"{w}={final.get('CONFIG_' + w, 'n')}" for w in dict.fromkeys(words))
            out.append(f"    {c.where}: {c.kind} {c.expr}    [{values}]")
    return "\n".join(out)
