"""Every third-party module that pilotcommit/ and flows/ import at run time comes with the base
install (``pip install -e .``), or is an optional package reached only through a guard that
says what to install (:func:`pilotcommit.dependencies.require`, or an import inside
``try/except ImportError``).

Read from the sources, nothing imported. A declared package's submodule that we import is
followed through its own module-level imports, because a declared package can hold parts whose
requirements it does not declare: ``mlflow.system_metrics`` imports psutil, which mlflow (skinny
or not) does not require, and that is how the README's first command once failed in a base
install while CI, with the test extra's psutil, was green (issue 23).
"""

from __future__ import annotations

import ast
import importlib.machinery
import re
import sys
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from pilotcommit.dependencies import OPTIONAL

ROOT = Path(__file__).resolve().parents[2]
OWN = {"pilotcommit", "flows"}
STDLIB = set(sys.stdlib_module_names) | {"__future__"}


# --------------------------------------------------------------------------- what the install brings


def declared_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(text) for text in project["dependencies"]]


@cache
def base_closure() -> frozenset[str]:
    """Canonical names of every distribution the base install brings: the declared
    dependencies and, recursively, their own requirements without extras."""
    environment = {**default_environment(), "extra": ""}
    seen: set[str] = set()
    todo = [r for r in declared_requirements() if r.marker is None or r.marker.evaluate(environment)]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(requirement.name) or []
        except metadata.PackageNotFoundError:
            continue  # not installed here: its own requirements cannot be read (and need not be)
        for text in requires:
            child = Requirement(text)
            if child.marker is None or child.marker.evaluate(environment):
                todo.append(child)
    return frozenset(seen)


@cache
def _top_level_names() -> dict[str, list[str]]:
    return metadata.packages_distributions()  # one scan of the installed distributions


def distributions_of(top: str) -> frozenset[str]:
    return frozenset(canonicalize_name(d) for d in _top_level_names().get(top, []))


# --------------------------------------------------------------------------- reading imports


@dataclass(frozen=True)
class Import:
    module: str  # absolute dotted name
    where: str  # file:line
    guarded: bool  # inside try/except ImportError, or under `if TYPE_CHECKING`
    module_level: bool  # executed whenever the file is imported: not in a def, not under an `if`


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    names = []
    kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    for kind in kinds:
        if isinstance(kind, ast.Name):
            names.append(kind.id)
        elif isinstance(kind, ast.Attribute):
            names.append(kind.attr)
    return handler.type is None or bool({"ImportError", "ModuleNotFoundError", "Exception", "BaseException"} & set(names))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


@cache
def read_imports(path: Path, package: str | None = None) -> list[Import]:
    """The import statements of ``path`` with their context. ``package``: the dotted package
    the file belongs to (resolves relative imports)."""
    tree = ast.parse(path.read_bytes(), filename=str(path))
    found: list[Import] = []

    def visit(node: ast.AST, guarded: bool, module_level: bool) -> None:
        if isinstance(node, ast.Try):
            inner = guarded or any(_catches_import_error(h) for h in node.handlers)
            for child in node.body:
                visit(child, inner, module_level)
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                visit(child, guarded, module_level)
            return
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True, module_level)
            for child in node.orelse:
                visit(child, guarded, module_level)
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.If)):
            # a function's imports run when it is called; an `if`'s only on some platforms or
            # versions (`if sys.version_info >= (3, 13)`, `if is_hqq_available()`)
            module_level = False
        where = f"{path}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found.extend(Import(alias.name, where, guarded, module_level) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if package is None:
                    return
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append(Import(name, where, guarded, module_level))
        for child in ast.iter_child_nodes(node):
            visit(child, guarded, module_level)

    visit(tree, False, True)
    return found


_TOP_LEVEL_IMPORT = re.compile(r"^(?:from[ \t]+(\.*[\w.]*)[ \t]+import\b|import[ \t]+([\w.]+(?:[ \t]*,[ \t]*[\w.]+)*))",
                               re.MULTILINE)


@cache
def unconditional_imports(path: Path, package: str) -> list[Import]:
    """The imports a third-party module runs whenever it is imported: statements at column 0
    (not in a def, an `if` or a `try`), found by a regex: parsing hundreds of files of torch,
    transformers and prefect with ``ast`` would take seconds. (A docstring line starting with
    ``import`` would be read as one: a false alarm, never a missed import.)"""
    found = []
    text = path.read_text(errors="replace")
    for match in _TOP_LEVEL_IMPORT.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        where = f"{path}:{line}"
        if match.group(1) is not None:
            name = match.group(1)
            level = len(name) - len(name.lstrip("."))
            if level:
                base = package.split(".")
                base = base[: len(base) - level + 1]
                rest = name.lstrip(".")
                name = ".".join(base + ([rest] if rest else []))
            found.append(Import(name, where, False, True))
        else:
            found.extend(Import(n.strip(), where, False, True) for n in match.group(2).split(","))
    return found


@cache
def module_file(module: str) -> tuple[Path, bool] | None:
    """``(file, is_package)`` of an installed module, found without importing anything."""
    parts = module.split(".")
    spec = importlib.machinery.PathFinder.find_spec(parts[0])
    if spec is None or not spec.submodule_search_locations:
        return None
    directory = Path(next(iter(spec.submodule_search_locations)))
    for part in parts[1:]:
        if (directory / part / "__init__.py").is_file():
            directory = directory / part
        elif (directory / f"{part}.py").is_file():
            return directory / f"{part}.py", False
        else:
            return None  # a name defined in the package, not a module of its own
    return directory / "__init__.py", True


def third_party_problems(module: str, via: str, seen: set[str], closure: frozenset[str],
                         scope: str | None = None) -> list[str]:
    """Follow ``module`` (a submodule of an installed package) through its module-level imports;
    every other package it needs must be one of ``closure`` (what the base install brings).

    Only the part of the package we use is followed: imports that stay inside ``scope``, the
    imported module's first subpackage (``mlflow.system_metrics`` for
    ``mlflow.system_metrics.system_metrics_monitor``; the module itself for a module directly
    under the root, as ``transformers.cache_utils``). The rest of a declared package is that
    package's own business, and walking all of torch or transformers would take seconds."""
    top = module.split(".")[0]
    problems: list[str] = []
    parts = module.split(".")
    scope = scope or ".".join(parts[:2])
    # the packages Python imports on the way (the root's own __init__ is that package's business)
    for depth in range(2, len(parts) + 1):
        name = ".".join(parts[:depth])
        if name in seen:
            continue
        seen.add(name)
        located = module_file(name)
        if located is None:
            continue
        path, is_package = located
        package = name if is_package else ".".join(parts[: depth - 1])
        for imp in unconditional_imports(path, package):
            other = imp.module.split(".")[0]
            if other in STDLIB or not other:
                continue
            if other == top:
                if imp.module == scope or imp.module.startswith(scope + "."):
                    problems += third_party_problems(imp.module, via, seen, closure, scope)
            elif not (distributions_of(other) & closure):
                problems.append(f"{via} imports {name}, which imports {imp.module} ({imp.where}): "
                                f"{other} does not come with the base install")
    return problems


def own_sources() -> list[Path]:
    return sorted(p for folder in OWN for p in (ROOT / folder).rglob("*.py"))


def dependency_problems() -> list[str]:
    declared = {canonicalize_name(r.name) for r in declared_requirements()}
    problems: list[str] = []
    seen: set[str] = set()
    for path in own_sources():
        for imp in read_imports(path):
            top = imp.module.split(".")[0]
            if not top or top in STDLIB or top in OWN or imp.guarded:
                continue
            if top in OPTIONAL:
                problems.append(f"{imp.where}: imports the optional {top} directly; use "
                                f"pilotcommit.dependencies.require({imp.module!r})")
                continue
            dists = distributions_of(top)
            if not dists & declared:
                problems.append(f"{imp.where}: imports {imp.module}, whose distribution "
                                f"({', '.join(sorted(dists)) or 'not installed'}) is not in [project.dependencies]")
                continue
            if "." in imp.module:
                problems += third_party_problems(imp.module, imp.where, seen, base_closure())
    return problems


def require_calls() -> list[tuple[str, str]]:
    """``(module, file:line)`` of every ``require("...")`` call in the sources."""
    calls = []
    for path in own_sources():
        for node in ast.walk(ast.parse(path.read_bytes())):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "require"
                    and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                calls.append((node.args[0].value, f"{path}:{node.lineno}"))
    return calls


# --------------------------------------------------------------------------- tests


def test_every_runtime_import_comes_with_the_base_install_or_behind_a_guard():
    problems = dependency_problems()
    assert not problems, "\n".join(problems)


def test_every_required_module_is_a_registered_optional_package():
    calls = require_calls()
    assert calls, "no require() call found: the check reads nothing"
    unknown = [f"{where}: require({module!r})" for module, where in calls if module.split(".")[0] not in OPTIONAL]
    assert not unknown, "\n".join(unknown)


def test_the_check_sees_an_undeclared_package_behind_a_declared_one():
    """The rule that found psutil: mlflow's system metrics import psutil, which mlflow does not
    require; the check must see that through the submodule, without psutil being declared."""
    without_psutil = base_closure() - distributions_of("psutil")
    problems = third_party_problems("mlflow.system_metrics.system_metrics_monitor", "here", set(), without_psutil)
    assert any("psutil does not come with the base install" in p for p in problems), problems
    assert not third_party_problems("mlflow.system_metrics.system_metrics_monitor", "here", set(),
                                    base_closure() | distributions_of("psutil"))
