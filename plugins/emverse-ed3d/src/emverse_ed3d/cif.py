"""A small CIF reader: single items and loops of one data block.

Enough for PETS2 ``.cif_pets`` files and simple structure CIFs (CCDC or
hand-written). Values stay strings; :func:`cif_number` turns ``0.51538(12)``
into ``0.51538`` (the standard uncertainty in brackets is dropped).
"""

from __future__ import annotations

import shlex
from pathlib import Path

from emverse.errors import EmverseError


class CifBlock:
    """Items (``_name -> str``) and loops (list of ``{_name: [str, ...]}``)."""

    def __init__(self, items: dict[str, str], loops: list[dict[str, list[str]]], source: str):
        self.items = items
        self.loops = loops
        self.source = source

    def loop_with(self, tag: str) -> dict[str, list[str]] | None:
        """The loop holding column ``tag`` (lower-case), or None."""
        for loop in self.loops:
            if tag in loop:
                return loop
        return None

    def item(self, tag: str, default: str | None = None) -> str | None:
        return self.items.get(tag, default)


def cif_number(text: str) -> float:
    """``'0.51538(12)'`` -> 0.51538; ``'.'`` and ``'?'`` -> nan."""
    text = text.strip()
    if text in (".", "?"):
        return float("nan")
    bracket = text.find("(")
    if bracket >= 0:
        text = text[:bracket]
    return float(text)


def _tokens(lines: list[str]):
    """Yield (token, is_text_block) over the file, skipping comments."""
    i = 0
    n = len(lines)
    while i < n:
        line = lines[i]
        if line.startswith(";"):
            block = [line[1:]]
            i += 1
            while i < n and not lines[i].startswith(";"):
                block.append(lines[i])
                i += 1
            i += 1  # closing ';'
            yield "\n".join(block).strip(), True
            continue
        stripped = line.strip()
        i += 1
        if not stripped or stripped.startswith("#"):
            continue
        if "'" in stripped or '"' in stripped or "#" in stripped:
            try:
                parts = shlex.split(stripped, comments=True, posix=True)
            except ValueError:
                parts = stripped.split()
        else:
            parts = stripped.split()
        for part in parts:
            yield part, False


def read_cif(path: str | Path) -> CifBlock:
    """Parse the first data block of a CIF file."""
    path = Path(path)
    if not path.is_file():
        raise EmverseError(f"CIF file {str(path)!r} does not exist; check the path")
    text = path.read_text(encoding="utf-8", errors="replace")
    return parse_cif(text, source=str(path))


def parse_cif(text: str, source: str = "<string>") -> CifBlock:
    items: dict[str, str] = {}
    loops: list[dict[str, list[str]]] = []
    tokens = list(_tokens(text.splitlines()))
    i = 0
    seen_block = False
    while i < len(tokens):
        token, is_text = tokens[i]
        lower = token.lower()
        if not is_text and lower.startswith("data_"):
            if seen_block:
                break
            seen_block = True
            i += 1
            continue
        if not is_text and lower == "loop_":
            i += 1
            names: list[str] = []
            while i < len(tokens) and not tokens[i][1] and tokens[i][0].startswith("_"):
                names.append(tokens[i][0].lower())
                i += 1
            values: list[str] = []
            while i < len(tokens):
                tok, txt = tokens[i]
                low = tok.lower()
                if not txt and (
                    tok.startswith("_") or low == "loop_" or low.startswith("data_")
                ):
                    break
                values.append(tok)
                i += 1
            if not names:
                raise EmverseError(f"{source}: a loop_ without column names; fix the file")
            if len(values) % len(names) != 0:
                raise EmverseError(
                    f"{source}: loop with columns {names} has {len(values)} values, not a "
                    f"multiple of {len(names)}; a row is missing a column"
                )
            loop = {name: values[j :: len(names)] for j, name in enumerate(names)}
            loops.append(loop)
            continue
        if not is_text and token.startswith("_"):
            if i + 1 >= len(tokens):
                raise EmverseError(f"{source}: item {token} has no value")
            items[lower] = tokens[i + 1][0]
            i += 2
            continue
        i += 1  # stray value: ignore
    return CifBlock(items, loops, source)
