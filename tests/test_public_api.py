"""The service uses other packages through their public API only: an upgrade may change any
underscore name without notice. An AST scan of service/ and gunicorn.conf.py for the three ways
in: importing a private name, reading or writing a private attribute of another package's
object (``getattr(x, "_y")`` included), and overriding (or setting) a base class's private
member. ruff's SLF001 sees only the second, and only outside ``self``."""

import ast
import importlib
import inspect
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCANNED = [*sorted((REPO / "service").rglob("*.py")), REPO / "gunicorn.conf.py"]


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


@dataclass(frozen=True)
class Finding:
    path: Path
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}: {self.what}"


def parsed() -> Iterator[tuple[Path, ast.Module]]:
    for path in SCANNED:
        yield path, ast.parse(path.read_text(), filename=str(path))


def own_private_names() -> set[str]:
    """Underscore names the service defines itself: its own attributes, methods and
    module-level names, which it may use on its own objects."""
    names: set[str] = set()
    for _, tree in parsed():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.alias):
                names.add(node.asname or node.name)
    return {name for name in names if is_private(name)}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts)


def external_base_sources(name: str, tree: ast.Module) -> dict[str, str]:
    """For each class of the module with a base from another package: the source of those
    bases' modules, where their private members are named."""
    if not any(isinstance(node, ast.ClassDef) for node in tree.body):
        return {}
    module = importlib.import_module(name)
    sources: dict[str, str] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        cls = getattr(module, node.name, None)
        if not inspect.isclass(cls):
            continue
        text = ""
        for base in cls.__mro__[1:]:
            base_module = base.__module__
            if base_module.startswith("service") or base_module == "builtins":
                continue
            try:
                text += inspect.getsource(inspect.getmodule(base))  # type: ignore[arg-type]
            except (TypeError, OSError):
                text += " ".join(vars(base))
        if text:
            sources[node.name] = text
    return sources


def findings() -> list[Finding]:
    trees = list(parsed())
    found = [
        finding
        for path, tree in trees
        for finding in base_findings(path, tree, external_base_sources(module_name(path), tree))
    ]
    # A name the service sets only as its base's private member is not its own.
    own = own_private_names() - {finding.what.rsplit(" ", 1)[-1] for finding in found}
    for path, tree in trees:
        found += use_findings(path, tree, own)
    return sorted(set(found), key=str)


def use_findings(path: Path, tree: ast.Module, own: set[str]) -> Iterator[Finding]:
    """Private names imported, or used on objects other than the service's own."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in {"service", "__future__"}:
                continue
            if any(is_private(part) for part in node.module.split(".")):
                yield Finding(path, node.lineno, f"imports from {node.module}")
            for alias in node.names:
                if is_private(alias.name):
                    yield Finding(path, node.lineno, f"imports {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if any(is_private(part) for part in alias.name.split(".")):
                    yield Finding(path, node.lineno, f"imports {alias.name}")
        elif isinstance(node, ast.Attribute) and is_private(node.attr):
            on_self = isinstance(node.value, ast.Name) and node.value.id in {"self", "cls"}
            if not on_self and node.attr not in own:
                yield Finding(path, node.lineno, f"uses .{node.attr}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in {"getattr", "setattr", "hasattr", "delattr"}
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and is_private(node.args[1].value)
        ):
            yield Finding(path, node.lineno, f"{node.func.id}(..., {node.args[1].value!r})")


def base_findings(path: Path, tree: ast.Module, bases: dict[str, str]) -> Iterator[Finding]:
    """Private members of another package's base class, overridden or set by a subclass."""
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name in bases):
        source = bases[cls.name]
        for node in ast.walk(cls):
            name = None
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                name = node.name
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in {"self", "cls"}
            ):
                name = node.attr
            if name and is_private(name) and re.search(rf"\b{re.escape(name)}\b", source):
                yield Finding(path, node.lineno, f"{cls.name} touches its base's {name}")


def test_the_service_uses_no_private_name_of_another_package() -> None:
    assert [str(finding) for finding in findings()] == []


SAMPLE = """
from uvicorn._types import Scope
from structlog.contextvars import _CONTEXT_VARS
import opentelemetry.sdk._logs
from uvicorn.server import Server


class Mine:
    def __init__(self) -> None:
        self._own = 1


class Draining(Server):
    async def _serve(self) -> None:
        self._own_too = Mine()._own
        self.should_exit = True


def spy(span, metric):
    getattr(metric, "_buckets")
    span._start_time = 1
    return span._attributes
"""


def test_the_scan_finds_each_kind_of_private_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scan itself, on code that does each thing it must catch and some it must not."""
    path = tmp_path / "private_use_sample.py"
    path.write_text(SAMPLE)
    monkeypatch.syspath_prepend(str(tmp_path))
    tree = ast.parse(SAMPLE)
    bases = external_base_sources("private_use_sample", tree)
    own = {"_own", "_own_too"}
    found = {finding.what for finding in base_findings(path, tree, bases)}
    found |= {finding.what for finding in use_findings(path, tree, own)}
    assert found == {
        "imports from uvicorn._types",
        "imports _CONTEXT_VARS",
        "imports opentelemetry.sdk._logs",
        "Draining touches its base's _serve",
        "getattr(..., '_buckets')",
        "uses ._start_time",
        "uses ._attributes",
    }


def test_dependencies_have_lower_bounds_only() -> None:
    """uv.lock pins every version; pyproject.toml only says what is too old, so that
    `uv lock --upgrade` reaches new releases and the tests judge them."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    requirements = [
        *project["project"]["dependencies"],
        *(r for group in project["dependency-groups"].values() for r in group),
    ]
    capped = [r for r in requirements if re.search(r"<|~=|==|!=", r.split(";")[0])]
    assert capped == []
