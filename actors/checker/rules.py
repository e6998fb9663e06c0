"""Static rules for a generated module: what untrusted tool code may not do, read from its syntax tree.

Pure functions of the source text (no imports of it, no I/O). The generated module is the only untrusted
code of a server. The OS sandbox it runs in is the boundary; these rules are defence in depth, refusing
before anything runs whatever could reach past the runner's public API:

Rules (all errors, which fail the build, except the two warnings, which are logged):
- `syntax-error`, `too-large` (over `MAX_SOURCE_BYTES`), `too-deep` (nesting past what the checker reads):
  nothing else is checked.
- `banned-import`: anything outside `ALLOWED_MODULES` and the SDK surface `PUBLIC_SDK` (os, sys, subprocess,
  socket, ctypes, importlib, pickle, threading, asyncio, and every other part of `runner_template`:
  server, app, upstream's internals...), and relative imports; `star-import`: `from x import *`.
  The SDK may be imported only as `from runner_template import sdk, upstream`, `import runner_template.sdk`,
  or its public names themselves (`from runner_template.sdk import Field`).
- `sdk-surface`: a name bound to an SDK module reaches only that module's public names (`upstream.request`,
  not `upstream.configure`), and an SDK module is never used as a value (`m = upstream`, `f(sdk)`), which
  would carry it past this check.
- `banned-call`: calling `eval`, `exec`, `compile`, `__import__`, `open`, `globals`, `locals`, `vars`,
  `breakpoint`, `input`, `setattr`, `delattr`, `memoryview`, `exit`, `quit`, `help`; `banned-name`: the same
  builtins used as values (`run = eval`), which would smuggle them past `banned-call`.
- `dynamic-attribute`: `getattr`/`hasattr` with a computed name, or used as a value.
- `dunder-access`: any `__x__`-shaped attribute, name, definition, import alias, match attribute or
  getattr name (`().__class__.__mro__`, `__builtins__`, `getattr(x, "__globals__")`); only `__all__ = ...`
  is allowed. `private-access`: any other attribute starting with `_` (`x._evaluate`, `upstream._policy`),
  in an attribute, a getattr/hasattr name, a match attribute, an imported name or an import alias (names
  the code binds itself, like a local `_x`, are its own business). `frame-access`: frame and code internals
  without dunders (`gi_frame`, `f_globals`, `f_back`...).
- `string-evaluation`: anything that turns a string into code. The evaluators by name (`ForwardRef`,
  `get_type_hints`, `get_annotations`, `evaluate_forward_ref`, `_eval_type`), and
  `from __future__ import annotations`. Annotations, because the runtime evaluates them
  (`inspect.signature(eval_str=True)`, pydantic, `functools.singledispatch` resolve strings nested anywhere
  in them): in a parameter, return or variable annotation no string (outside `Literal[...]` and the
  arguments of `Field(...)` in `Annotated[...]`), no call, and no name bound to a value rather than a type
  (an import, a class, a function, a type alias whose value obeys the same rule, a `TypeVar`). Outside
  annotations: no string argument to a generic type (`Alias = list["..."]`) or to `TypeVar`/`NewType`.
- `shared-mutation`: assigning or deleting an attribute or item of an imported module or of what it holds
  (`json.dumps = ...`, `upstream.request = ...`): imports are shared with the runner.
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
- warnings: `unbounded-loop` (`while True`: a tool that never returns ties up the runner; the runtime's
  per-call time limit ends it) and `print-call` (tools return values; stdout is lost, or corrupts a stdio
  transport).

Attribute-name rules (`process-spawn`, `filesystem-write`, `socket-server`, `private-access`...) match by name
whatever the receiver: generated code has no business calling a method called `system` or `bind` either way.
Which names are types and which are values is read scope by scope (module, class, function), as Python
resolves them; a name bound in any way other than by import, `def`, `class` or a type alias counts as a value.
"""

from __future__ import annotations

import ast
import io
import re
import string
import tokenize
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
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

SDK_PACKAGE = "runner_template"
"""The trusted runtime package; generated code sees only `PUBLIC_SDK` of it."""

PUBLIC_SDK: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "runner_template.sdk": frozenset({"tool", "Field"}),
        "runner_template.upstream": frozenset({"request", "Auth"}),
    }
)
"""The runtime's surface for generated code, module -> its public names; every SDK import and attribute
check is derived from this table."""

BANNED_BUILTINS = frozenset(
    {
        "eval", "exec", "compile", "__import__", "open", "globals", "locals", "vars", "breakpoint", "input",
        "setattr", "delattr", "memoryview", "exit", "quit", "help",
    }
)
ATTRIBUTE_BUILTINS = frozenset({"getattr", "hasattr"})
"""Allowed only as direct calls with a constant, public attribute name."""
_CALLED_BUILTINS = BANNED_BUILTINS | ATTRIBUTE_BUILTINS

STRING_EVALUATORS = frozenset({"ForwardRef", "get_type_hints", "get_annotations", "evaluate_forward_ref", "_eval_type"})
"""Names of the typing machinery that evaluates a string as code (typing, typing_extensions, inspect)."""

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

_TYPING = ("typing", "typing_extensions")
_LITERAL = frozenset(f"{m}.Literal" for m in _TYPING)
_ANNOTATED = frozenset(f"{m}.Annotated" for m in _TYPING)
_FIELD = frozenset(f"{module}.Field" for module, names in PUBLIC_SDK.items() if "Field" in names)
_TYPE_VARIABLES = frozenset(
    f"{m}.{n}" for m in _TYPING for n in ("TypeVar", "ParamSpec", "TypeVarTuple", "NewType", "TypeAliasType")
)
"""Calls whose arguments after the name are types (a bound, constraints, a supertype, an alias's value)."""
_GENERIC_BUILTINS = frozenset(f"builtins.{n}" for n in ("list", "dict", "set", "frozenset", "tuple", "type"))
_GENERIC_MODULES = frozenset({*_TYPING, "collections"})
_MAX_ALIAS_DEPTH = 32
"""Type aliases are followed this many deep; deeper ones count as values."""

STATIC_RULES = frozenset(
    {
        "syntax-error", "too-large", "too-deep", "banned-import", "star-import", "sdk-surface", "banned-call",
        "banned-name", "dynamic-attribute", "dunder-access", "private-access", "frame-access",
        "string-evaluation", "shared-mutation", "format-escape", "filesystem-write", "process-spawn",
        "environment-access", "socket-server", "suppression-comment", "hidden-characters", "prompt-injection",
        "missing-tool", "unbounded-loop", "print-call",
    }
)
"""Every rule this module reports (the type checker's, linter's and sandboxed run's are named otherwise)."""
MODULE_RULES = frozenset({"too-large", "too-deep", "missing-tool"})
"""Rules about the whole module, reported at 1:1 rather than at a construct."""

_STRING_IN_TYPE = "a string in a type is evaluated as code at run time; write the type itself"
_NEWLINE = re.compile(r"\r\n|\r|\n")
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
    where: str = ""
    """The text `line` and `column` count in when it is not `file`: `tool 'add', body` for a finding mapped
    into a PureFunction body by `actors.checker.locate`."""

    def render(self) -> str:
        """`file:line:col rule: message` (or `tool 'add', body line 2:5 rule: message`), the form shown in
        build logs and failure details."""
        if self.where:
            return f"{self.where} line {self.line}:{self.column} {self.rule}: {self.message}"
        return f"{self.file}:{self.line}:{self.column} {self.rule}: {self.message}"


def module_allowed(name: str) -> bool:
    """Whether generated code may import module `name`."""
    return name in ALLOWED_MODULES or name in PUBLIC_SDK


def public_names(namespace: str) -> frozenset[str]:
    """What generated code may reach in an SDK namespace: a module's public names, or the SDK modules of the
    package (`sdk`, `upstream` of `runner_template`)."""
    if namespace in PUBLIC_SDK:
        return PUBLIC_SDK[namespace]
    return frozenset(m.rpartition(".")[2] for m in PUBLIC_SDK if m.rpartition(".")[0] == namespace)


def _is_namespace(name: str) -> bool:
    return name == SDK_PACKAGE or name in PUBLIC_SDK


def _sdk_surface() -> str:
    return "; ".join(f"{m} ({', '.join(sorted(names))})" for m, names in sorted(PUBLIC_SDK.items()))


def _dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def callee_name(func: ast.expr) -> str | None:
    """The name a call is made by: `f` of `f(...)` and of `x.f(...)`."""
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


# --- scopes: which names are types and which are values ---


@dataclass(frozen=True, eq=False)
class _Binding:
    """One way a scope binds a name: an import of `origin`, a def or class, an alias of `value` (a single
    assignment, evaluated in `scope`), or a value nothing is known about."""

    kind: Literal["import", "definition", "alias", "value"]
    origin: str = ""
    value: ast.expr | None = None
    scope: _Scope | None = None


@dataclass(eq=False)
class _Scope:
    """The names a module, class or function (or lambda) body binds."""

    kind: Literal["module", "class", "function"]
    parent: _Scope | None = None
    names: dict[str, list[_Binding]] = field(default_factory=dict)
    global_names: set[str] = field(default_factory=set)
    nonlocal_names: set[str] = field(default_factory=set)

    def module(self) -> _Scope:
        """The module scope this one is nested in."""
        scope = self
        while scope.parent is not None:
            scope = scope.parent
        return scope

    def lookup(self, name: str) -> list[_Binding] | None:
        """What `name` evaluated in this scope may be bound by; None when no scope binds it (a builtin)."""
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.global_names:
                return self.module().names.get(name)
            if (scope is self or scope.kind != "class") and name in scope.names:
                return scope.names[name]
            scope = scope.parent
        return None


def _all_arguments(args: ast.arguments) -> list[ast.arg]:
    extra = [a for a in (args.vararg, args.kwarg) if a is not None]
    return [*args.posonlyargs, *args.args, *args.kwonlyargs, *extra]


class _Binder(ast.NodeVisitor):
    """Records what each scope binds, and the scope of each def, lambda and class body."""

    def __init__(self) -> None:
        self.scope = _Scope("module")
        self.inner: dict[int, _Scope] = {}
        self.namespaces: dict[str, set[str]] = {}
        """Every name any import binds to an SDK namespace, whatever its scope: `upstream` after
        `from runner_template import upstream`, `runner_template` after `import runner_template.sdk`."""

    def bind(self, name: str, binding: _Binding) -> None:
        if binding.kind == "import" and _is_namespace(binding.origin):
            self.namespaces.setdefault(name, set()).add(binding.origin)
        scope = self.scope
        if name in scope.global_names:
            targets = [scope.module()]
        elif name in scope.nonlocal_names:
            # The nearest enclosing function that binds it; all of them, to be safe.
            targets = []
            outer = scope.parent
            while outer is not None:
                if outer.kind == "function":
                    targets.append(outer)
                outer = outer.parent
        else:
            targets = [scope]
        for target in targets:
            target.names.setdefault(name, []).append(binding)

    def _body(self, node: ast.AST, kind: Literal["class", "function"], body: Iterable[ast.AST],
              arguments: Iterable[ast.arg] = ()) -> None:
        outer = self.scope
        self.scope = self.inner[id(node)] = _Scope(kind, outer)
        for arg in arguments:
            self.bind(arg.arg, _Binding("value"))
        for child in body:
            self.visit(child)
        self.scope = outer

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            origin = alias.name if alias.asname else alias.name.split(".")[0]
            self.bind(alias.asname or origin, _Binding("import", origin))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = "." * node.level + (node.module or "")
        for alias in node.names:
            if alias.name != "*":
                self.bind(alias.asname or alias.name, _Binding("import", f"{module}.{alias.name}"))

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for child in _outer_parts(node):
            self.visit(child)
        self.bind(node.name, _Binding("definition"))
        self._body(node, "function", node.body, _all_arguments(node.args))

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function

    def visit_Lambda(self, node: ast.Lambda) -> None:
        for child in [*node.args.defaults, *(d for d in node.args.kw_defaults if d is not None)]:
            self.visit(child)
        self._body(node, "function", [node.body], _all_arguments(node.args))

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for child in [*node.decorator_list, *node.bases, *node.keywords]:
            self.visit(child)
        self.bind(node.name, _Binding("definition"))
        self._body(node, "class", node.body)

    def visit_Global(self, node: ast.Global) -> None:
        self.scope.global_names.update(node.names)

    def visit_Nonlocal(self, node: ast.Nonlocal) -> None:
        self.scope.nonlocal_names.update(node.names)

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            if isinstance(target, ast.Name):
                self.bind(target.id, _Binding("alias", value=node.value, scope=self.scope))
            else:
                self.visit(target)
        self.visit(node.value)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if isinstance(node.target, ast.Name):
            if node.value is not None:
                self.bind(node.target.id, _Binding("alias", value=node.value, scope=self.scope))
        else:
            self.visit(node.target)
        self.visit(node.annotation)
        if node.value is not None:
            self.visit(node.value)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Store):
            self.bind(node.id, _Binding("value"))

    def visit_comprehension(self, node: ast.comprehension) -> None:
        # Its targets are local to the comprehension; a walrus inside binds in the enclosing scope.
        for child in [node.iter, *node.ifs]:
            self.visit(child)

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.name:
            self.bind(node.name, _Binding("value"))
        self.generic_visit(node)

    def visit_MatchAs(self, node: ast.MatchAs) -> None:
        if node.name:
            self.bind(node.name, _Binding("value"))
        self.generic_visit(node)

    def visit_MatchStar(self, node: ast.MatchStar) -> None:
        if node.name:
            self.bind(node.name, _Binding("value"))

    def visit_MatchMapping(self, node: ast.MatchMapping) -> None:
        if node.rest:
            self.bind(node.rest, _Binding("value"))
        self.generic_visit(node)


def _outer_parts(node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.expr]:
    """What a def evaluates in the scope around it: decorators, defaults and annotations."""
    args = node.args
    return [
        *node.decorator_list, *args.defaults, *(d for d in args.kw_defaults if d is not None),
        *_annotations(node),
    ]


def _annotations(node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.expr]:
    found = [a.annotation for a in _all_arguments(node.args) if a.annotation is not None]
    return [*found, node.returns] if node.returns is not None else found


def _origin(expr: ast.expr, scope: _Scope) -> str | None:
    """The qualified name `expr` refers to when only imports bind it (`typing.Literal` for `Literal` after
    `from typing import Literal`), `builtins.<name>` for a name nothing binds, else None."""
    if isinstance(expr, ast.Attribute):
        base = _origin(expr.value, scope)
        return None if base is None or base.startswith("builtins.") else f"{base}.{expr.attr}"
    if isinstance(expr, ast.Name):
        bindings = scope.lookup(expr.id)
        if bindings is None:
            return f"builtins.{expr.id}"
        origins = {b.origin for b in bindings}
        if len(origins) == 1 and all(b.kind == "import" for b in bindings):
            return origins.pop()
    return None


def _generic(origin: str | None) -> bool:
    """Whether `origin` is a type that turns string arguments into forward references."""
    return origin is not None and (origin in _GENERIC_BUILTINS or origin.split(".")[0] in _GENERIC_MODULES)


class _Types:
    """Where a type expression could hold a string the runtime evaluates as code."""

    def __init__(self) -> None:
        self._aliases: dict[int, bool] = {}
        """id of an alias binding -> whether its value is a safe type."""
        self._following: set[int] = set()

    def problems(self, expr: ast.expr, scope: _Scope, *, names: bool, depth: int = 0) -> list[tuple[ast.AST, str]]:
        """(node, message) for each string in `expr` outside `Literal[...]` and `Field(...)` in `Annotated[...]`;
        with `names`, also each call and each name bound to a value (an annotation must name types only)."""
        found: list[tuple[ast.AST, str]] = []
        stack: list[ast.AST] = [expr]
        while stack:
            node = stack.pop()
            if isinstance(node, ast.Constant):
                if isinstance(node.value, str):
                    found.append((node, _STRING_IN_TYPE))
            elif isinstance(node, ast.JoinedStr):
                found.append((node, _STRING_IN_TYPE))
            elif isinstance(node, ast.Subscript):
                stack.append(node.value)
                stack.extend(self._type_arguments(node, scope))
            elif isinstance(node, ast.Call):
                if names:
                    found.append((node, "a call in an annotation may return a string the runtime evaluates as "
                                        "code; only Field(...) in Annotated[...] is allowed"))
            elif isinstance(node, ast.Name):
                if names and not self.names_type(node.id, scope, depth):
                    found.append((node, f"{node.id!r} is bound to a value, not a type; the runtime evaluates "
                                        "annotations, and a string among them as code"))
            elif isinstance(node, ast.Attribute):
                stack.append(node.value)
            else:
                stack.extend(ast.iter_child_nodes(node))
        return found

    def _type_arguments(self, node: ast.Subscript, scope: _Scope) -> list[ast.AST]:
        """The parts of `X[...]` that are types: none of `Literal[...]`, the first of `Annotated[...]` and its
        metadata other than `Field(...)` calls, all of anything else."""
        origin = _origin(node.value, scope)
        if origin in _LITERAL:
            return []
        if origin not in _ANNOTATED:
            return [node.slice]
        parts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        return [
            p for i, p in enumerate(parts)
            if i == 0 or not (isinstance(p, ast.Call) and _origin(p.func, scope) in _FIELD)
        ]

    def names_type(self, name: str, scope: _Scope, depth: int) -> bool:
        """Whether every binding `name` may have where `scope` evaluates it is a type (or a builtin)."""
        bindings = scope.lookup(name)
        for binding in bindings or ():
            if binding.kind == "value":
                return False
            if binding.kind == "alias" and not self._alias_is_type(binding, depth):
                return False
        return True

    def _alias_is_type(self, binding: _Binding, depth: int) -> bool:
        key = id(binding)
        if key in self._aliases:
            return self._aliases[key]
        if key in self._following or depth >= _MAX_ALIAS_DEPTH or binding.value is None or binding.scope is None:
            return False  # a cycle or a chain too long to follow: not a type
        self._following.add(key)
        verdict = not self.type_variable_problems(binding.value, binding.scope, names=True, depth=depth + 1) \
            if self._is_type_variable(binding.value, binding.scope) \
            else not self.problems(binding.value, binding.scope, names=True, depth=depth + 1)
        self._following.discard(key)
        self._aliases[key] = verdict
        return verdict

    @staticmethod
    def _is_type_variable(value: ast.expr, scope: _Scope) -> bool:
        return isinstance(value, ast.Call) and _origin(value.func, scope) in _TYPE_VARIABLES

    def type_variable_problems(
        self, call: ast.expr, scope: _Scope, *, names: bool, depth: int = 0
    ) -> list[tuple[ast.AST, str]]:
        """Problems of `TypeVar("T", bound=...)`-like calls: everything after the name is a type."""
        if not self._is_type_variable(call, scope):
            return []
        assert isinstance(call, ast.Call)
        found: list[tuple[ast.AST, str]] = []
        for part in [*call.args[1:], *(k.value for k in call.keywords)]:
            found.extend(self.problems(part, scope, names=names, depth=depth))
        return found


class _Rules(ast.NodeVisitor):
    def __init__(self, file: str, tree: ast.Module) -> None:
        self.file = file
        self.findings: list[Finding] = []
        binder = _Binder()
        binder.visit(tree)
        self._inner = binder.inner
        self.scope = binder.scope
        self.types = _Types()
        self._sdk = binder.namespaces
        """name -> the SDK namespaces (`runner_template`, `runner_template.sdk`...) an import binds it to."""
        self._called: set[int] = set()
        """ids of Name nodes that are the callee of a call already judged by visit_Call."""
        self._bases: set[int] = set()
        """ids of expressions that are the object of an attribute access."""
        self._annotated: set[int] = set()
        """ids of nodes inside annotations, which the annotation rule has judged."""

    def add(self, node: ast.AST, rule: str, message: str, severity: Severity = "error") -> None:
        line = getattr(node, "lineno", 1)
        column = getattr(node, "col_offset", 0) + 1
        self.findings.append(Finding(line, column, rule, message, severity, self.file))

    # --- imports ---

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if not module_allowed(alias.name):
                self.add(node, "banned-import", f"import of {alias.name!r} is not allowed{_sdk_hint(alias.name)}")
            self._alias(node, alias)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level:
            self.add(node, "banned-import", "relative imports are not allowed")
        elif module in PUBLIC_SDK:
            extra = [a.name for a in node.names if a.name != "*" and a.name not in PUBLIC_SDK[module]]
            if extra:
                names = ", ".join(f"{module}.{name}" for name in extra)
                self.add(node, "banned-import", f"{names} is not part of the SDK{_sdk_hint(module)}")
        elif module == SDK_PACKAGE:
            extra = [a.name for a in node.names if a.name != "*" and not module_allowed(f"{module}.{a.name}")]
            if extra:
                names = ", ".join(f"{module}.{name}" for name in extra)
                self.add(node, "banned-import", f"{names} is not part of the SDK{_sdk_hint(module)}")
        elif not module_allowed(module):
            allowed = [a for a in node.names if a.name != "*" and module_allowed(f"{module}.{a.name}")]
            if len(allowed) != len(node.names):
                self.add(node, "banned-import", f"import from {module!r} is not allowed{_sdk_hint(module)}")
        for alias in node.names:
            if alias.name == "*":
                self.add(node, "star-import", f"'from {module} import *' is not allowed; import names explicitly")
            elif module == "__future__" and alias.name == "annotations":
                self.add(node, "string-evaluation", "'from __future__ import annotations' makes every annotation "
                                                    "a string the runtime evaluates as code")
            elif _dunder(alias.name):
                self.add(node, "dunder-access", f"importing {alias.name!r} is not allowed")
            elif alias.name in STRING_EVALUATORS:
                self.add(node, "string-evaluation", f"{alias.name} evaluates strings as code")
            elif alias.name.startswith("_"):
                self.add(node, "private-access", f"importing {alias.name!r} is not allowed: it is private to {module}")
            self._alias(node, alias)

    def _alias(self, node: ast.stmt, alias: ast.alias) -> None:
        if alias.asname and _dunder(alias.asname):
            self.add(node, "dunder-access", f"binding {alias.asname!r} is not allowed")
        elif alias.asname and alias.asname.startswith("_"):
            self.add(node, "private-access", f"importing as {alias.asname!r} is not allowed")

    # --- names and attributes ---

    def visit_Name(self, node: ast.Name) -> None:
        called = id(node) in self._called
        if _dunder(node.id):
            if not (called and node.id in BANNED_BUILTINS) and not (
                isinstance(node.ctx, ast.Store) and node.id == "__all__"
            ):
                self.add(node, "dunder-access", f"the name {node.id} is not allowed")
        elif node.id in _CALLED_BUILTINS:
            if called:
                pass  # judged with its call
            elif node.id in BANNED_BUILTINS:
                self.add(node, "banned-name", f"{node.id} may not be used, not even as a value")
            else:
                self.add(node, "dynamic-attribute", f"{node.id} may only be called directly with a constant name")
        elif node.id in ENVIRONMENT_NAMES:
            self.add(node, "environment-access", f"{node.id}: secrets reach tools only through the runner")
        elif node.id in STRING_EVALUATORS:
            self.add(node, "string-evaluation", f"{node.id} evaluates strings as code")
        elif isinstance(node.ctx, ast.Load) and self._sdk.get(node.id) and id(node) not in self._bases:
            self.add(node, "sdk-surface", f"the module {node.id} may only be used as {node.id}.<name>, not as a value")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self._bases.add(id(node.value))
        attr = node.attr
        if _dunder(attr):
            self.add(node, "dunder-access", f"attribute .{attr} is not allowed")
        elif attr in STRING_EVALUATORS:
            self.add(node, "string-evaluation", f".{attr} evaluates strings as code")
        elif attr.startswith("_"):
            self.add(node, "private-access", f"attribute .{attr} is private to its object")
        elif attr in FRAME_ATTRIBUTES:
            self.add(node, "frame-access", f"attribute .{attr} reaches interpreter internals")
        elif attr in ENVIRONMENT_NAMES:
            self.add(node, "environment-access", f".{attr}: secrets reach tools only through the runner")
        elif outside := [ns for ns in self._namespaces(node.value) if attr not in public_names(ns)]:
            names = ", ".join(sorted(public_names(outside[0])))
            self.add(node, "sdk-surface", f"{outside[0]}.{attr} is not part of the SDK (it offers {names})")
        elif self._namespaces(node) and id(node) not in self._bases:
            self.add(node, "sdk-surface", f"the module {next(iter(self._namespaces(node)))} may only be used "
                                          "through its names, not as a value")
        elif not isinstance(node.ctx, ast.Load):
            self._mutation(node)
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if not isinstance(node.ctx, ast.Load):
            self._mutation(node)
        elif id(node) not in self._annotated and _generic(_origin(node.value, self.scope)):
            for part, message in self.types.problems(node, self.scope, names=False):
                self.add(part, "string-evaluation", message)
        self.generic_visit(node)

    def _mutation(self, node: ast.Attribute | ast.Subscript) -> None:
        root: ast.expr = node
        while isinstance(root, ast.Attribute | ast.Subscript):
            root = root.value
        if isinstance(root, ast.Name) and any(b.kind == "import" for b in self.scope.lookup(root.id) or ()):
            self.add(node, "shared-mutation", f"{root.id} is imported: imports are shared with the runner and "
                                              "may not be changed")

    def _namespaces(self, expr: ast.expr) -> set[str]:
        """The SDK namespaces `expr` may be (`upstream` -> runner_template.upstream), by the imports of its name."""
        if isinstance(expr, ast.Name):
            return self._sdk.get(expr.id, set())
        if isinstance(expr, ast.Attribute):
            return {f"{ns}.{expr.attr}" for ns in self._namespaces(expr.value) if _is_namespace(f"{ns}.{expr.attr}")}
        return set()

    def visit_MatchClass(self, node: ast.MatchClass) -> None:
        for attr in node.kwd_attrs:
            if _dunder(attr) or attr in FRAME_ATTRIBUTES:
                self.add(node, "dunder-access", f"matching attribute {attr!r} is not allowed")
            elif attr in STRING_EVALUATORS:
                self.add(node, "string-evaluation", f"matching attribute {attr!r} reaches an evaluator of strings")
            elif attr.startswith("_"):
                self.add(node, "private-access", f"matching attribute {attr!r} is not allowed: it is private")
        self.generic_visit(node)

    # --- definitions and annotations ---

    def _annotation(self, annotation: ast.expr) -> None:
        self._annotated.update(id(n) for n in ast.walk(annotation))
        for part, message in self.types.problems(annotation, self.scope, names=True):
            self.add(part, "string-evaluation", message)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        if _dunder(node.name):
            self.add(node, "dunder-access", f"defining {node.name} is not allowed")
        for annotation in _annotations(node):
            self._annotation(annotation)
        for child in _outer_parts(node):
            self.visit(child)
        self._body(node, node.body)

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function

    def visit_Lambda(self, node: ast.Lambda) -> None:
        for child in [*node.args.defaults, *(d for d in node.args.kw_defaults if d is not None)]:
            self.visit(child)
        self._body(node, [node.body])

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        if _dunder(node.name):
            self.add(node, "dunder-access", f"defining {node.name} is not allowed")
        for child in [*node.decorator_list, *node.bases, *node.keywords]:
            self.visit(child)
        self._body(node, node.body)

    def _body(self, node: ast.AST, body: Iterable[ast.AST]) -> None:
        outer = self.scope
        self.scope = self._inner[id(node)]
        for child in body:
            self.visit(child)
        self.scope = outer

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._annotation(node.annotation)
        self.generic_visit(node)

    # --- calls ---

    def visit_Call(self, node: ast.Call) -> None:
        name = callee_name(node.func)
        if isinstance(node.func, ast.Name):
            self._called.add(id(node.func))
            self._builtin_call(node, node.func.id)
        if name is not None:
            self._named_call(node, name)
        for part, message in self.types.type_variable_problems(node, self.scope, names=False):
            self.add(part, "string-evaluation", message)
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
            elif attr.value in STRING_EVALUATORS:
                self.add(node, "string-evaluation", f"{name}() of {attr.value!r} reaches an evaluator of strings")
            elif attr.value.startswith("_"):
                self.add(node, "private-access", f"{name}() of {attr.value!r} is not allowed: it is private")
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


def _sdk_hint(module: str) -> str:
    if module == SDK_PACKAGE or module.startswith(SDK_PACKAGE + "."):
        return f"; generated code may use only the SDK: {_sdk_surface()}"
    return ""


def injection_markers(text: str) -> list[str]:
    """The prompt-injection phrases `text` contains (hidden characters have their own rule)."""
    return injection_phrases(text)


def _hidden_characters(source: str, file: str) -> Iterator[Finding]:
    # Lines as Python counts them (str.splitlines also splits at form feeds and U+2028, which Python does not).
    for number, line in enumerate(_NEWLINE.split(source), start=1):
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


def tool_functions(tree: ast.Module) -> dict[str, list[ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Top-level functions by the tool name `@sdk.tool(name=...)` gives them (a name may, wrongly, have several)."""
    found: dict[str, list[ast.FunctionDef | ast.AsyncFunctionDef]] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for decorator in node.decorator_list:
                if isinstance(decorator, ast.Call) and callee_name(decorator.func) == "tool":
                    for k in decorator.keywords:
                        if k.arg == "name" and isinstance(k.value, ast.Constant) and isinstance(k.value.value, str):
                            found.setdefault(k.value.value, []).append(node)
    return found


def _missing_tools(tree: ast.Module, tools: Sequence[str], file: str) -> Iterator[Finding]:
    # A tool is a top-level function, named on the wire by `@sdk.tool(name=...)` (the function's own name
    # may carry a suffix to dodge a keyword).
    defined = set(tool_functions(tree))
    defined.update(n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef))
    for name in tools:
        if name not in defined:
            yield Finding(1, 1, "missing-tool", f"tool {name!r} is not defined as a top-level function", "error", file)


def check_source(source: str, file: str = "generated.py", tools: Sequence[str] = ()) -> list[Finding]:
    """Every static finding in a generated module, sorted by position; `tools` are the names it must define."""
    if len(source.encode("utf-8", "surrogatepass")) > MAX_SOURCE_BYTES:
        return [Finding(1, 1, "too-large", f"the module is over {MAX_SOURCE_BYTES} bytes", "error", file)]
    findings: list[Finding] = list(_hidden_characters(source, file))
    too_deep = Finding(1, 1, "too-deep", "the module nests deeper than the checker reads", "error", file)
    try:
        tree = ast.parse(source, filename=file, type_comments=False)
    except SyntaxError as exc:
        findings.append(Finding(exc.lineno or 1, exc.offset or 1, "syntax-error", exc.msg, "error", file))
        return sorted(findings)
    except RecursionError:
        return sorted([*findings, too_deep])
    try:
        rules = _Rules(file, tree)
        rules.visit(tree)
    except RecursionError:
        return sorted([*findings, too_deep])
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
