"""The runner image's dependency list covers what the runner's code imports (no Docker needed)."""

from __future__ import annotations

import ast
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

import bus_schemas
import runner_template
from actors.runtime.runner_images import RUNNER_DEPENDENCIES, runner_requirements, wheel_platforms


def third_party_imports(package_dir: Path, own: set[str]) -> set[str]:
    names: set[str] = set()
    for path in package_dir.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in own and n not in sys.stdlib_module_names and n != "__future__"}


def installed_closure(roots: list[str]) -> set[str]:
    """The distributions `roots` pull in (without optional extras), canonical names."""
    seen: set[str] = set()
    todo = [r.lower().replace("_", "-") for r in roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            todo.append(requirement.name.lower().replace("_", "-"))
    return seen


def test_every_module_the_runner_imports_is_installed_in_its_image() -> None:
    imported = set()
    for package in (runner_template, bus_schemas):
        imported |= third_party_imports(Path(str(package.__file__)).parent, {"runner_template", "bus_schemas"})
    provided = installed_closure([d.distribution for d in RUNNER_DEPENDENCIES])
    by_module = metadata.packages_distributions()
    missing = {m for m in imported if not {d.lower().replace("_", "-") for d in by_module.get(m, [])} & provided}
    assert not missing, f"runner code imports {missing}, which RUNNER_DEPENDENCIES does not install"


def test_image_requirements_take_their_ranges_from_pyproject() -> None:
    requirements = runner_requirements()
    assert len(requirements) == len(RUNNER_DEPENDENCIES)
    assert all(any(op in r for op in (">=", "<", "==")) for r in requirements)
    assert wheel_platforms()[0].startswith("manylinux_2_36_")
