"""Rendering a plan into its generated module: deterministic, typed, and a pure body stays in its function."""

from __future__ import annotations

import ast

import msgspec
import pytest

from actors.codegen.artifacts import build_artifact
from actors.codegen.render import RenderRefused, render_module
from bus_schemas.plans import HttpCall, PureFunction, ToolPlan, canonical_artifact_bytes, canonical_plan_bytes
from runner_template.sdk import tools_of
from runner_template.server import load_module
from tests.support.codegen_samples import plan_hash, sample_plan


def with_tool(plan: ToolPlan, index: int, **changes: object) -> ToolPlan:
    tools = list(plan.tools)
    tools[index] = msgspec.structs.replace(tools[index], **changes)
    return msgspec.structs.replace(plan, tools=tuple(tools))


def test_the_same_plan_renders_to_byte_identical_source_and_the_same_artifact_hash() -> None:
    plan = sample_plan("https://api.example.com")
    # the plan as the PLANS bucket holds it (canonical JSON, keys sorted) renders the same
    stored = msgspec.json.decode(canonical_plan_bytes(plan), type=ToolPlan)
    first, second = build_artifact(plan, plan_hash(plan)), build_artifact(stored, plan_hash(stored))
    assert first.module_source == second.module_source
    assert canonical_artifact_bytes(first) == canonical_artifact_bytes(second)
    assert first.tools == ("get_user", "create_note", "add", "list")
    assert first.secrets == ("EXAMPLE_TOKEN",) and first.upstream_hosts == ("api.example.com",)


def test_generated_module_imports_with_typed_tools_and_no_secret_values() -> None:
    plan = sample_plan("https://api.example.com")
    artifact = build_artifact(plan, plan_hash(plan))
    module = load_module(artifact.module_name, artifact.module_source)
    tools = {info.name: fn for info, fn in tools_of(module)}
    assert list(tools) == list(artifact.tools)
    assert tools["list"].__name__ == "list_"  # a builtin's name is suffixed; the tool keeps its name
    assert tools["add"](a=2, b=3) == 5
    assert "secret='EXAMPLE_TOKEN'" in artifact.module_source
    assert "Bearer" not in artifact.module_source and "environ" not in artifact.module_source


def test_a_body_that_does_not_parse_is_refused_with_the_reason() -> None:
    plan = sample_plan(add_body="return (a +")
    with pytest.raises(RenderRefused, match=r"tool 'add': the function body is not valid Python: .*line 1"):
        render_module(plan, plan_hash(plan))


@pytest.mark.parametrize("body", [
    "return 1\n)\nimport os\n(",          # close the function's parentheses and escape
    "    return 1\nimport os",             # an indented first line
    "return 1\n'''\nimport os",            # an unterminated string swallowing what follows
])
def test_bodies_that_try_to_leave_their_function_are_refused(body: str) -> None:
    plan = sample_plan(add_body=body)
    with pytest.raises(RenderRefused, match="not valid Python"):
        render_module(plan, plan_hash(plan))


def test_a_body_stays_inside_its_function_unchanged() -> None:
    body = 'note = """two\nlines"""\ndef inner():\n    """doc\n  indented"""\n    return note\nreturn inner()\n'
    plan = sample_plan(add_body=body)
    source = render_module(plan, plan_hash(plan))
    tree = ast.parse(source)
    add = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "add")
    assert ast.dump(ast.Module(body=add.body[1:], type_ignores=[])) == ast.dump(ast.parse(body))
    module = load_module(f"bmms_test_body_{plan_hash(plan)[:8]}", source)
    assert module.add(a=1, b=2) == "two\nlines"


def test_a_body_that_yields_or_awaits_is_refused() -> None:
    for body, reason in (("yield a", "not yield"), ("return await a", "does not compile")):
        plan = sample_plan(add_body=body)
        with pytest.raises(RenderRefused, match=reason):
            render_module(plan, plan_hash(plan))


def test_http_tools_must_stay_on_declared_hosts_and_secrets() -> None:
    plan = sample_plan("https://api.example.com")
    call = plan.tools[0].implementation
    assert isinstance(call, HttpCall)
    cases = {
        "not in the plan's upstream hosts": msgspec.structs.replace(call, base_url="https://evil.example.net"),
        "names no secret the plan declares": msgspec.structs.replace(call, auth_secret="OTHER_TOKEN"),
        "without a path parameter": msgspec.structs.replace(call, path_params=()),
        "is not in its input schema": msgspec.structs.replace(call, query_params=("nope",)),
    }
    for reason, bad in cases.items():
        with pytest.raises(RenderRefused, match=reason):
            render_module(with_tool(plan, 0, implementation=bad), "0" * 64)


def test_wire_names_become_identifiers_with_aliases_and_literals_stay_literals() -> None:
    plan = with_tool(sample_plan(), 2, input_schema={
        "type": "object",
        "properties": {
            "class": {"type": "string"}, "2nd-value": {"type": "integer"}, "_private": {"type": "number"},
            "json": {"type": "string", "description": "'''\"\"\"\\ tricky"}, "upstream": {"type": "boolean"},
        },
        "required": ["class"],
    }, implementation=PureFunction(body="return [class_, p_2nd_value, private, json_, upstream_]"))
    source = render_module(plan, plan_hash(plan))
    assert "class_: Annotated[str, Field(alias='class')]" in source
    assert "p_2nd_value: Annotated[int | None, Field(alias='2nd-value')] = None" in source
    module = load_module(f"bmms_test_names_{plan_hash(plan)[:8]}", source)
    assert module.add(class_="c", upstream_=True) == ["c", None, None, None, True]
