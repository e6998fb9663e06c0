"""Static rules for a generated module: what untrusted tool code may not do, read from its syntax tree.

Pure functions of the source text (no imports of it, no I/O). The generated module is the only untrusted
code of a server; it runs inside the trusted runner, so everything that could reach outside the runner's
own API is refused here, before it runs:

Rules (all errors, which fail the build, except the two warnings, which are logged):
- `syntax-error`, `too-large` (over `MAX_SOURCE_BYTES`): nothing else is checked.
- `banned-import`: anything outside `ALLOWED_MODULES` and `runner_template` (os, sys, subprocess, socket,
  ctypes, importlib, pickle, threading, asyncio...), and relative imports; `star-import`: `from x import *`.
- `banned-call`: calling `eval`, `exec`, `compile`, `__import__`, `open`, `globals`, `locals`, `vars`,
  `breakpoint`, `input`, `setattr`, `delattr`, `memoryview`, `exit`, `quit`, `help`; `banned-name`: the same
  builtins used as values (`run = eval`), which would smuggle them past `banned-call`.
- `dynamic-attribute`: `getattr`/`hasattr` with a computed name, or used as a value.
- `dunder-access`: any `__x__`-shaped attribute, name, definition, import alias, match attribute or
  getattr name (`().__class__.__mro__`, `__builtins__`, `getattr(x, "__globals__")`); only `__all__ = ...`
  is allowed. `frame-access`: frame and code internals without dunders (`gi_frame`, `f_globals`, `f_back`...).
- `format-escape`: `str.format`/`format_map` on a computed template, or with fields that reach attributes or
  items (`"{0.__class__}".format(x)`).
- `filesystem-write`: `open(..., "w"/"a"/"x"/"+")` and path mutators (`write_text`, `unlink`, `mkdir`...).
- `process-spawn`: `system`, `popen`, `Popen`, `fork`, `exec*`, `spawn*`, `kill`, subprocess helpers.
- `environment-access`: `environ`, `getenv`, `putenv`: secrets reach tools only through the runner.
- `socket-server`: `bind`, `listen`, `accept`, `serve_forever`, `start_server`, `create_server`, stdlib servers.
- `suppression-comment`: `# type: ignore`, `# noqa`, `# mypy:`, `# ruff:`, `# pyright:` (the type check and
  lint must see everything).
- `hidden-characters`: Unicode tag characters (U+E0000-U+E007F), zero-width and bidi controls, anywhere.
- `prompt-injection`: text aimed at a model in strings, docstrings or comments ("ignore previous
  instructions", "you are now", "system prompt", chat-template tokens...), also behind escapes.
- `missing-tool`: a tool the artifact lists that the module does not define at top level.
- warnings: `unbounded-loop` (`while True`: a tool that never returns ties up the runner) and `print-call`
  (tools return values; stdout is lost, or corrupts a stdio transport).

Attribute-name rules (`process-spawn`, `filesystem-write`, `socket-server`...) match by name whatever the
receiver: generated code has no business calling a method called `system` or `bind` either way.
"""

from __future__ import annotations

import ast
import io
import re
import string
import tokenize
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from actors.runtime.injection import injection_phrases

Severity = Literal["error", "warning"]

MAX_SOURCE_BYTES = 512 * 1024
"""Generated modules are tool functions; anything bigger is refused before parsing."""

ALLOWED_MODULES = frozenset(
    {
        "__future__",
        "typing",
        "typing_extensions",
        "collections",
        "collections.abc",
        "dataclasses",
        "datetime",
        "decimal",
        "enum",
        "fractions",
        "functools",
        "itertools",
        "json",
        "math",
        "re",
        "statistics",
        "urllib.parse",
    }
)
"""Stdlib modules generated code may import: pure computation only. `string` is absent on purpose
(`string.Formatter` walks attributes), as is everything that touches processes, files, sockets or the
interpreter."""

ALLOWED_PACKAGES = ("runner_template",)
"""Trusted packages whose modules generated code may import; mypy --strict (no implicit re-export) keeps
it from reaching modules they import themselves."""

BANNED_BUILTINS = frozenset(
    {
        "eval", "exec", "compile", "__import__", "open", "globals", "locals", "vars", "breakpoint", "input",
        "setattr", "delattr", "memoryview", "exit", "quit", "help",
    }
)
ATTRIBUTE_BUILTINS = frozenset({"getattr", "hasattr"})
"""Allowed only as direct calls with a constant, non-dunder attribute name."""

FRAME_ATTRIBUTES = frozenset(
    {
        "gi_frame", "gi_code", "gi_yieldfrom", "cr_frame", "cr_code", "cr_await", "ag_frame", "ag_code",
        "f_globals", "f_locals", "f_builtins", "f_back", "f_code", "tb_frame", "tb_next", "co_code",
        "co_consts", "co_names", "func_globals", "func_code",
    }
)
FILESYSTEM_MUTATORS = frozenset(
    {
        "write_text", "write_bytes", "unlink", "rmdir", "mkdir", "makedirs", "removedirs", "rmtree", "touch",
        "chmod", "lchmod", "chown", "lchown", "symlink_to", "hardlink_to", "mkfifo", "mknod", "copyfile",
        "copytree", "move",
    }
)
PROCESS_CALLS = frozenset(
    {
        "system", "popen", "Popen", "fork", "forkpty", "execl", "execle", "execlp", "execlpe", "execv", "execve",
        "execvp", "execvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp",
        "spawnvpe", "posix_spawn", "posix_spawnp", "kill", "killpg", "check_output", "check_call",
        "getoutput", "getstatusoutput", "create_subprocess_exec", "create_subprocess_shell",
    }
)
ENVIRONMENT_NAMES = frozenset({"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"})
SOCKET_SERVER_NAMES = frozenset(
    {
        "bind", "listen", "accept", "serve_forever", "start_server", "create_server", "start_unix_server",
        "create_unix_server", "TCPServer", "UDPServer", "ThreadingTCPServer", "HTTPServer",
        "ThreadingHTTPServer", "UnixStreamServer",
    }
)

_SUPPRESSION = re.compile(r"#.*?\b(type:\s*ignore|noqa|mypy:|ruff:|pyright:)", re.IGNORECASE)



def _hidden(ch: str) -> str | None:
    """Why `ch` is a character nobody sees, or None."""
    code = ord(ch)
    if 0xE0000 <= code <= 0xE007F:
        return f"Unicode tag character U+{code:04X}"
    if ch in "\u200b\u200c\u200d\u2060\ufeff\u180e\u00ad":
        return f"zero-width character U+{code:04X}"
    if ch in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c":
        return f"bidirectional control character U+{code:04X}"
    return None


@dataclass(frozen=True, order=True)
class Finding:
    """One problem in the generated module, located at a 1-based line and column."""

    line: int
    column: int
    rule: str
    message: str
    severity: Severity = "error"
    file: str = "generated.py"

    def render(self) -> str:
        """`file:line:col rule: message`, the form shown in build logs and failure details."""
        return f"{self.file}:{self.line}:{self.column} {self.rule}: {self.message}"


def module_allowed(name: str) -> bool:
    """Whether generated code may import module `name`."""
    return name in ALLOWED_MODULES or any(name == p or name.startswith(p + ".") for p in ALLOWED_PACKAGES)


def _dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def callee_name(func: ast.expr) -> str | None:
    """The name a call is made by: `f` of `f(...)` and of `x.f(...)`."""
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


class _Rules(ast.NodeVisitor):
    def __init__(self, file: str) -> None:
        self.file = file
        self.findings: list[Finding] = []
        self._called: set[int] = set()
        """ids of Name nodes that are the callee of a call already judged by visit_Call."""

    def add(self, node: ast.AST, rule: str, message: str, severity: Severity = "error") -> None:
        line = getattr(node, "lineno", 1)
        column = getattr(node, "col_offset", 0) + 1
        self.findings.append(Finding(line, column, rule, message, severity, self.file))

    # --- imports ---

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if not module_allowed(alias.name):
                self.add(node, "banned-import", f"import of {alias.name!r} is not allowed")
            self._alias(node, alias)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level:
            self.add(node, "banned-import", "relative imports are not allowed")
        elif not module_allowed(module):
            allowed = [a for a in node.names if a.name != "*" and module_allowed(f"{module}.{a.name}")]
            if len(allowed) != len(node.names):
                self.add(node, "banned-import", f"import from {module!r} is not allowed")
        for alias in node.names:
            if alias.name == "*":
                self.add(node, "star-import", f"'from {module} import *' is not allowed; import names explicitly")
            elif _dunder(alias.name):
                self.add(node, "dunder-access", f"importing {alias.name!r} is not allowed")
            self._alias(node, alias)

    def _alias(self, node: ast.stmt, alias: ast.alias) -> None:
        if alias.asname and _dunder(alias.asname):
            self.add(node, "dunder-access", f"binding {alias.asname!r} is not allowed")

    # --- names and attributes ---

    def visit_Name(self, node: ast.Name) -> None:
        if id(node) not in self._called:
            if node.id in BANNED_BUILTINS:
                self.add(node, "banned-name", f"{node.id} may not be used, not even as a value")
            elif node.id in ATTRIBUTE_BUILTINS:
                self.add(node, "dynamic-attribute", f"{node.id} may only be called directly with a constant name")
            elif node.id in ENVIRONMENT_NAMES:
                self.add(node, "environment-access", f"{node.id}: secrets reach tools only through the runner")
        if _dunder(node.id) and not (isinstance(node.ctx, ast.Store) and node.id == "__all__"):
            self.add(node, "dunder-access", f"the name {node.id} is not allowed")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if _dunder(node.attr):
            self.add(node, "dunder-access", f"attribute .{node.attr} is not allowed")
        elif node.attr in FRAME_ATTRIBUTES:
            self.add(node, "frame-access", f"attribute .{node.attr} reaches interpreter internals")
        elif node.attr in ENVIRONMENT_NAMES:
            self.add(node, "environment-access", f".{node.attr}: secrets reach tools only through the runner")
        self.generic_visit(node)

    def visit_MatchClass(self, node: ast.MatchClass) -> None:
        for attr in node.kwd_attrs:
            if _dunder(attr) or attr in FRAME_ATTRIBUTES:
                self.add(node, "dunder-access", f"matching attribute {attr!r} is not allowed")
        self.generic_visit(node)

    def _definition(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        if _dunder(node.name):
            self.add(node, "dunder-access", f"defining {node.name} is not allowed")
        self.generic_visit(node)

    visit_FunctionDef = _definition
    visit_AsyncFunctionDef = _definition
    visit_ClassDef = _definition

    # --- calls ---

    def visit_Call(self, node: ast.Call) -> None:
        name = callee_name(node.func)
        if isinstance(node.func, ast.Name):
            self._called.add(id(node.func))
            self._builtin_call(node, node.func.id)
        if name is not None:
            self._named_call(node, name)
        self.generic_visit(node)

    def _builtin_call(self, node: ast.Call, name: str) -> None:
        if name == "open":
            mode = node.args[1] if len(node.args) > 1 else next(
                (k.value for k in node.keywords if k.arg == "mode"), None
            )
            writes = isinstance(mode, ast.Constant) and isinstance(mode.value, str) and set(mode.value) & set("wax+")
            if writes or (mode is not None and not isinstance(mode, ast.Constant)):
                self.add(node, "filesystem-write", "open() for writing is not allowed")
            else:
                self.add(node, "banned-call", "open() is not allowed: tools have no files")
        elif name in BANNED_BUILTINS:
            self.add(node, "banned-call", f"{name}() is not allowed")
        elif name in ATTRIBUTE_BUILTINS:
            attr = node.args[1] if len(node.args) > 1 else None
            if not (isinstance(attr, ast.Constant) and isinstance(attr.value, str)):
                self.add(node, "dynamic-attribute", f"{name}() with a computed attribute name is not allowed")
            elif _dunder(attr.value) or attr.value in FRAME_ATTRIBUTES:
                self.add(node, "dunder-access", f"{name}() of {attr.value!r} is not allowed")
        elif name == "print":
            self.add(node, "print-call", "print() output is not returned to the caller", "warning")

    def _named_call(self, node: ast.Call, name: str) -> None:
        if name in PROCESS_CALLS:
            self.add(node, "process-spawn", f"{name}() starts or signals processes")
        elif name in FILESYSTEM_MUTATORS:
            self.add(node, "filesystem-write", f"{name}() changes the filesystem")
        elif name in SOCKET_SERVER_NAMES:
            self.add(node, "socket-server", f"{name}() would serve or accept connections")
        elif name in {"format", "format_map"} and isinstance(node.func, ast.Attribute):
            self._format_call(node, node.func)

    def _format_call(self, node: ast.Call, func: ast.Attribute) -> None:
        template = func.value
        if not (isinstance(template, ast.Constant) and isinstance(template.value, str)):
            self.add(node, "format-escape", f".{func.attr}() on a computed template is not allowed; use an f-string")
            return
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(template.value) if f]
        except ValueError:
            return  # raises at run time; mypy/ruff report it
        if any("." in f or "[" in f for f in fields):
            self.add(node, "format-escape", "format fields may not reach attributes or items")

    # --- statements ---

    def visit_While(self, node: ast.While) -> None:
        if isinstance(node.test, ast.Constant) and node.test.value:
            self.add(node, "unbounded-loop", "a loop without an end condition may never return", "warning")
        self.generic_visit(node)


def injection_markers(text: str) -> list[str]:
    """The prompt-injection phrases `text` contains (hidden characters have their own rule)."""
    return injection_phrases(text)


def _hidden_characters(source: str, file: str) -> Iterator[Finding]:
    for number, line in enumerate(source.splitlines(), start=1):
        for column, ch in enumerate(line, start=1):
            reason = _hidden(ch)
            if reason is not None:
                yield Finding(number, column, "hidden-characters", f"{reason} is not allowed", "error", file)
                break  # one per line is enough to locate it


def _token_findings(source: str, file: str) -> Iterator[Finding]:
    """Findings in comments and string literals, located at the exact line of the marker."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):
        return
    for token in tokens:
        if token.type == tokenize.COMMENT and _SUPPRESSION.search(token.string):
            yield Finding(token.start[0], token.start[1] + 1, "suppression-comment",
                          "suppression comments are not allowed in generated code", "error", file)
        if token.type in (tokenize.COMMENT, tokenize.STRING):
            # Search line by line so a docstring's marker is reported on its own line.
            for offset, text in enumerate(token.string.split("\n")):
                for label in injection_markers(text):
                    column = token.start[1] + 1 if offset == 0 else 1
                    yield Finding(token.start[0] + offset, column, "prompt-injection",
                                  f"prompt-injection marker ({label!r}) in text", "error", file)


def _string_values(tree: ast.AST) -> Iterator[ast.Constant]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node


def _missing_tools(tree: ast.Module, tools: Sequence[str], file: str) -> Iterator[Finding]:
    # A tool is a top-level function, named on the wire by `@sdk.tool(name=...)` (the function's own name
    # may carry a suffix to dodge a keyword).
    defined: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            defined.add(node.name)
            for decorator in node.decorator_list:
                if isinstance(decorator, ast.Call) and callee_name(decorator.func) == "tool":
                    defined.update(
                        k.value.value for k in decorator.keywords
                        if k.arg == "name" and isinstance(k.value, ast.Constant) and isinstance(k.value.value, str)
                    )
    for name in tools:
        if name not in defined:
            yield Finding(1, 1, "missing-tool", f"tool {name!r} is not defined as a top-level function", "error", file)


def check_source(source: str, file: str = "generated.py", tools: Sequence[str] = ()) -> list[Finding]:
    """Every static finding in a generated module, sorted by position; `tools` are the names it must define."""
    if len(source.encode("utf-8", "surrogatepass")) > MAX_SOURCE_BYTES:
        return [Finding(1, 1, "too-large", f"the module is over {MAX_SOURCE_BYTES} bytes", "error", file)]
    findings: list[Finding] = list(_hidden_characters(source, file))
    try:
        tree = ast.parse(source, filename=file, type_comments=False)
    except SyntaxError as exc:
        findings.append(Finding(exc.lineno or 1, exc.offset or 1, "syntax-error", exc.msg, "error", file))
        return sorted(findings)
    rules = _Rules(file)
    rules.visit(tree)
    findings.extend(rules.findings)
    textual = list(_token_findings(source, file))
    findings.extend(textual)
    # Markers hidden by escapes ("\x69gnore previous ...") only show in the parsed value.
    marked_lines = {f.line for f in textual if f.rule == "prompt-injection"}
    for node in _string_values(tree):
        assert isinstance(node.value, str)
        end = node.end_lineno or node.lineno
        if not any(node.lineno <= line <= end for line in marked_lines):
            for label in injection_markers(node.value):
                findings.append(Finding(node.lineno, node.col_offset + 1, "prompt-injection",
                                        f"prompt-injection marker ({label!r}) in text", "error", file))
    findings.extend(_missing_tools(tree, tools, file))
    return sorted(set(findings))


def errors(findings: Iterable[Finding]) -> list[Finding]:
    """The findings that fail a build."""
    return [f for f in findings if f.severity == "error"]
