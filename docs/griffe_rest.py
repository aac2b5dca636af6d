"""A griffe extension for the API reference (mkdocs.yml loads it): reads robustreg's
reST-flavoured docstrings as Markdown without changing them in the source.

- Sphinx roles (:class:`X`, :func:`~a.b.f`, ...) become optional cross-references: a link to
  the object's API entry when the site documents it, plain code otherwise (never a warning).
- "text::" before a literal block becomes "text:" (the indented block is Markdown code anyway);
  a "::" line on its own is dropped.
- reST simple tables (=====  ===== borders) become Markdown tables, and definition lists
  whose terms are literals become bullet lists.
- "\\ " (reST's escaped space, as in ``kind``\\ s) is removed.
- "Example:" becomes "Examples:", the Google-style section whose doctest lines render as code.
"""

from __future__ import annotations

import html
import re

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj):`(~?)\.?([\w.]+)`")
BORDER = re.compile(r"^(\s*)=+(?:\s+=+)+\s*$")
TERM = re.compile(r"^(\s*)``[^`]+``\s*$")


class RestToMarkdown(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: object) -> None:
        for obj in _walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = convert(obj.docstring.value, obj, loader)


def _walk(obj: griffe.Object):
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)


def _resolve(target: str, obj: griffe.Object, loader: griffe.GriffeLoader) -> str | None:
    """The canonical path of ``target`` looked up from ``obj``'s scope outwards, or None."""
    scopes: list[griffe.Object] = []
    scope: griffe.Object | None = obj
    while scope is not None:
        scopes.append(scope)
        scope = scope.parent
    candidates = [target] + [f"{s.path}.{target}" for s in scopes]
    for path in candidates:
        try:
            return loader.modules_collection[path].canonical_path
        except Exception:  # not found, or an alias that does not resolve
            continue
    return None


def convert(text: str, obj: griffe.Object, loader: griffe.GriffeLoader) -> str:
    def role(match: re.Match[str]) -> str:
        tilde, target = match.groups()
        shown = target.rsplit(".", 1)[-1] if tilde else target
        path = _resolve(target, obj, loader) or target
        return f'<autoref identifier="{html.escape(path)}" optional><code>{html.escape(shown)}</code></autoref>'

    text = "\n".join(
        ROLE.sub(plain if code else role, line) for line, code in zip(text.split("\n"), _code_lines(text), strict=True)
    )
    text = text.replace("\\ ", "")
    text = _tables(text)
    text = _definitions(text)
    lines = []
    for line in text.split("\n"):
        if line == "Example:":  # Google style's "Examples:" section renders doctest lines as code
            line = "Examples:"
        if line.strip() == "::":
            continue
        if line.endswith("::") and not line.lstrip().startswith((">>>", "...")):
            line = line[:-1]
        lines.append(line)
    return "\n".join(lines)


def plain(match: re.Match[str]) -> str:
    """A role inside a literal block: its text only (reST shows it verbatim there too)."""
    tilde, target = match.groups()
    return target.rsplit(".", 1)[-1] if tilde else target


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _code_lines(text: str) -> list[bool]:
    """Which lines Markdown reads as code: doctest lines, and indented blocks that follow a
    blank line and are indented by 4 or more past the text before them."""
    flags: list[bool] = []
    base = 0  # indentation of the last line of running text
    block: int | None = None  # indentation of the current code block
    blank = False
    for line in text.split("\n"):
        if not line.strip():
            flags.append(block is not None)
            blank = True
            continue
        indent = _indent(line)
        if block is not None and indent >= block:
            flags.append(True)
        elif blank and indent >= base + 4:
            block = indent
            flags.append(True)
        else:
            block = None
            base = indent
            flags.append(line.lstrip().startswith((">>>", "...")))
        blank = False
    return flags


def _definitions(text: str) -> str:
    """A reST definition list whose terms are literals (``"train"`` then an indented
    definition) becomes a Markdown bullet list."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        term = TERM.match(lines[i])
        if term and i + 1 < len(lines) and lines[i + 1].strip() and _indent(lines[i + 1]) > len(term.group(1)):
            pad, j, body = term.group(1), i + 1, []
            while j < len(lines) and lines[j].strip() and _indent(lines[j]) > len(pad):
                body.append(lines[j].strip())
                j += 1
            out.append(f"{pad}- {lines[i].strip()}: " + f"\n{pad}  ".join(body))
            i = j
        else:
            out.append(lines[i])
            i += 1
    return "\n".join(out)


def _tables(text: str) -> str:
    """Rewrite every reST simple table (three borders: top, below the header, bottom)."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        border = BORDER.match(lines[i])
        ends = [j for j in range(i + 1, len(lines)) if lines[j].strip() == lines[i].strip()][:2]
        if not border or len(ends) < 2:
            out.append(lines[i])
            i += 1
            continue
        spans = [m.span() for m in re.finditer(r"=+", lines[i])]

        def cells(line: str, spans: list[tuple[int, int]] = spans) -> list[str]:
            bounds = [start for start, _ in spans] + [len(line) + 1]
            return [line[bounds[k] : bounds[k + 1]].strip() for k in range(len(spans))]

        def rows(block: list[str]) -> list[list[str]]:
            merged: list[list[str]] = []
            for line in block:
                row = cells(line)
                if merged and not row[0]:  # a continuation line: the first column is empty
                    merged[-1] = [f"{a} {b}".strip() for a, b in zip(merged[-1], row, strict=True)]
                elif line.strip():
                    merged.append(row)
            return merged

        header = rows(lines[i + 1 : ends[0]])
        body = rows(lines[ends[0] + 1 : ends[1]])
        indent = border.group(1)
        table = [*header[:1], ["---"] * len(spans), *header[1:], *body]
        out.extend(f"{indent}| " + " | ".join(row) + " |" for row in table)
        i = ends[1] + 1
    return "\n".join(out)
