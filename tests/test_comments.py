"""Comments and docstrings in service/ say why, in a line or two: measurements (microseconds,
instruction counts, "this machine", profiler output) and third-party version numbers belong in
docs/ and bench/HISTORY.md, where they are dated and can be measured again."""

import ast
import io
import re
import tokenize
from pathlib import Path

SERVICE = Path(__file__).resolve().parents[1] / "service"

FIGURES = re.compile(
    r"\b\d+(\.\d+)?(-\d+(\.\d+)?)?\s*(us|µs|ns|microseconds?|nanoseconds?)\b"
    r"|\binstructions?\b"
    r"|\bthis machine\b"
    r"|\b(py-spy|callgrind|cProfile|perf stat)\b"
    r"|\b(FastAPI|Starlette|SQLAlchemy|redis-py|uvicorn|gunicorn|pydantic|structlog|Python)"
    r" \d+\.\d+"
    r"|\(\d+\.\d+(\.\d+)?\)",
    re.IGNORECASE,
)


def prose(path: Path) -> list[tuple[int, str]]:
    """Every comment and docstring of a module, with its line number."""
    source = path.read_text()
    found = [
        (token.start[0], token.string)
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    ]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            docstring = ast.get_docstring(node, clean=False)
            if docstring and node.body:
                found.append((node.body[0].lineno, docstring))
    return found


def test_no_measurements_or_versions_in_service_comments() -> None:
    offending = [
        f"{path.relative_to(SERVICE.parent)}:{line}: {match.group(0)!r}"
        for path in sorted(SERVICE.rglob("*.py"))
        for line, text in prose(path)
        for match in [FIGURES.search(text)]
        if match
    ]
    assert offending == [], "\n".join(offending)


def test_the_check_finds_what_it_looks_for() -> None:
    for text in (
        "# costs 4 of 7 us",
        "# 50-65 us of a read",
        "# 317k instructions",
        "# on this machine",
        "# FastAPI 0.165 wraps",
        "# native OpenTelemetry (0.165)",
    ):
        assert FIGURES.search(text), text
    assert not FIGURES.search("# waits at most 100 ms, then serves from the database")
