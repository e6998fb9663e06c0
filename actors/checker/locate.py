"""Findings as the person who wrote the tools should read them: in their own tool body, each reported once.

The checker's findings are positions in the generated module, which nobody wrote by hand. Two pure functions
(no I/O) turn them into what a build log should say; the checker calls them in this order:

    findings = deduplicate_findings(findings)               # on generated-file positions, which are exact
    findings = locate_findings(findings, artifact.module_source, plan)

`deduplicate_findings`: one finding per construct. Findings placed at a construct (the static rules other than
the whole-module ones, and the tools' `mypy[...]` / `ruff[...]` findings) that share file and line:column are
one problem: an error is kept over a warning (so deduplication never passes a build that failed), then a static
rule's finding over a tool's (it says what the code tries to do; the tool's often only follows from it), then
the earliest. Findings at placeholder positions (`missing-tool` at 1:1, the sandboxed run's at a tool's `def`
line) are distinct problems even where they share a position; only identical ones collapse. Order is kept.

`locate_findings`: a finding inside a PureFunction tool's body moves to that body's own text
(`tool 'add', body line 2:5 banned-call: eval() is not allowed`); every other finding (imports, decorators,
signatures, HTTP tools, the docstring codegen writes) keeps its place in the generated file. How:

- The tool's function is the one top-level function `@sdk.tool(name=...)` names. Codegen re-emits the body
  from its syntax tree after the docstring it writes, so the function's statements after the first match
  `ast.parse(body)`'s top-level statements one to one, in order. That is verified (same count, same tree,
  positions aside); a body that does not match is not mapped at all, rather than mapped wrongly.
- The generated statement whose lines hold the finding gives the user's statement. Walking the two
  statements' trees in the same order pairs every node with its counterpart (the trees are equal).
- A node of the generated statement that starts exactly at the finding (in bytes, as `ast` and mypy count,
  or characters, as ruff and the tokenizer count) gives its counterpart's start: the outermost such node, as
  the static rules report. Otherwise the innermost node containing the finding gives its counterpart's
  start, since re-emission rewrites spacing and quotes inside a line; except that a line inside a multi-line
  string keeps its offset and column when both strings span as many lines (their text is the same).
- Columns in the user's body count characters.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from actors.checker.rules import MODULE_RULES, STATIC_RULES, Finding, tool_functions
from bus_schemas.plans import PureFunction, ToolPlan

_NEWLINE = re.compile(r"\r\n|\r|\n")


def deduplicate_findings(findings: Sequence[Finding]) -> list[Finding]:
    """`findings` with each problem once: one per construct's position (an error over a warning, then the static
    rule's over a tool's, then the first), in their order; see the module docstring."""
    best: dict[tuple[str, str, int, int], Finding] = {}
    for finding in findings:
        if _at_a_construct(finding):
            key = _place(finding)
            if key not in best or _rank(finding) < _rank(best[key]):
                best[key] = finding
    kept: list[Finding] = []
    seen: set[Finding] = set()
    for finding in findings:
        if finding in seen or (_at_a_construct(finding) and best[_place(finding)] != finding):
            continue
        seen.add(finding)
        kept.append(finding)
    return kept


def locate_findings(findings: Sequence[Finding], source: str, plan: ToolPlan) -> list[Finding]:
    """`findings` of the generated module `source`, those inside a PureFunction tool's body moved to the line
    and column of the plan's body text with `where` naming the tool; the rest unchanged, in their order."""
    bodies = _bodies(source, plan)
    if not bodies:
        return list(findings)
    lines = _lines(source)
    return [_locate(finding, bodies, lines) for finding in findings]


def _at_a_construct(finding: Finding) -> bool:
    """Whether the finding's position is that of a construct (not a placeholder like 1:1)."""
    static = finding.rule in STATIC_RULES and finding.rule not in MODULE_RULES
    return static or "[" in finding.rule  # the tools' own codes: mypy[arg-type], ruff[S307]


def _place(finding: Finding) -> tuple[str, str, int, int]:
    return finding.file, finding.where, finding.line, finding.column


def _rank(finding: Finding) -> tuple[bool, bool]:
    return finding.severity != "error", finding.rule not in STATIC_RULES


@dataclass(frozen=True)
class _Body:
    """A PureFunction body: its statements as generated and as written, paired in order."""

    where: str
    generated: list[ast.stmt]
    written: list[ast.stmt]
    lines: list[str]
    """The body text as written, by line."""


def _lines(text: str) -> list[str]:
    return _NEWLINE.split(text)


def _bodies(source: str, plan: ToolPlan) -> list[_Body]:
    try:
        functions = tool_functions(ast.parse(source))
    except (SyntaxError, ValueError, RecursionError):
        return []
    bodies: list[_Body] = []
    for tool in plan.tools:
        impl = tool.implementation
        candidates = functions.get(tool.name, [])
        if not isinstance(impl, PureFunction) or len(candidates) != 1:
            continue
        generated = candidates[0].body[1:]  # after the docstring codegen writes
        try:
            written = ast.parse(impl.body).body
            same = len(generated) == len(written) and all(
                ast.dump(g) == ast.dump(w) for g, w in zip(generated, written, strict=True)
            )
        except (SyntaxError, ValueError, RecursionError):
            continue
        if written and same:
            bodies.append(_Body(f"tool {tool.name!r}, body", generated, written, _lines(impl.body)))
    return bodies


def _first_line(statement: ast.stmt) -> int:
    decorators: list[ast.expr] = getattr(statement, "decorator_list", [])
    return min([statement.lineno, *(d.lineno for d in decorators)])


def _locate(finding: Finding, bodies: list[_Body], lines: list[str]) -> Finding:
    if finding.where:
        return finding
    for body in bodies:
        for generated, written in zip(body.generated, body.written, strict=True):
            if _first_line(generated) <= finding.line <= (generated.end_lineno or generated.lineno):
                line, column = _position(finding, generated, written, lines, body.lines)
                return replace(finding, line=line, column=column, where=body.where)
    return finding


def _char_column(lines: list[str], line: int, byte_offset: int) -> int:
    """The 0-based character column of a 0-based UTF-8 byte offset on a 1-based line."""
    if not 1 <= line <= len(lines):
        return byte_offset
    return len(lines[line - 1].encode("utf-8", "surrogatepass")[:byte_offset].decode("utf-8", "ignore"))


def _start(node: ast.AST) -> tuple[int, int]:
    return getattr(node, "lineno", 0), getattr(node, "col_offset", 0)


def _end(node: ast.AST) -> tuple[int, int]:
    return getattr(node, "end_lineno", None) or 0, getattr(node, "end_col_offset", None) or 0


def _position(
    finding: Finding, generated: ast.stmt, written: ast.stmt, lines: list[str], written_lines: list[str]
) -> tuple[int, int]:
    """(line, column) in the written body of the finding inside `generated`; see the module docstring."""
    pairs = [(g, w) for g, w in zip(ast.walk(generated), ast.walk(written), strict=True) if hasattr(g, "lineno")]

    def start_of(node: ast.AST) -> tuple[int, int]:
        line, offset = _start(node)
        return line, _char_column(written_lines, line, offset) + 1

    at = (finding.line, finding.column - 1)
    for g, w in pairs:  # breadth first: the outermost node starting there comes first
        line, offset = _start(g)
        if line == at[0] and at[1] in (offset, _char_column(lines, line, offset)):
            return start_of(w)
    # Innermost containing node: the latest start, then the earliest end (in characters), then the deepest.
    inner: tuple[tuple[int, int, int, int], ast.AST, ast.AST] | None = None
    for g, w in pairs:
        (line, offset), (end_line, end_offset) = _start(g), _end(g)
        start = (line, _char_column(lines, line, offset))
        end = (end_line, _char_column(lines, end_line, end_offset))
        if start <= at <= end and (inner is None or (*start, -end[0], -end[1]) >= inner[0]):
            inner = ((*start, -end[0], -end[1]), g, w)
    if inner is None:
        return start_of(written)
    _, g, w = inner
    g_lines, w_lines = _end(g)[0] - _start(g)[0], _end(w)[0] - _start(w)[0]
    if isinstance(g, ast.Constant) and isinstance(g.value, str) and finding.line > g.lineno and g_lines == w_lines:
        return _start(w)[0] + finding.line - g.lineno, finding.column  # a line inside a multi-line string
    return start_of(w)
