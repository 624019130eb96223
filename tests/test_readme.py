"""The README and docs/ are part of the product: short where they are read first, generated where
they mirror the code, and never pointing at something that is not there."""

import re
from pathlib import Path

from scripts.settings_table import DOCUMENT, MARKERS, PREFIX, rows, table
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MAX_README_LINES = 250

FENCED_BLOCK = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def prose(text: str) -> str:
    """The text without code, where brackets and '#' lines are not Markdown."""
    return INLINE_CODE.sub("", FENCED_BLOCK.sub("", text))


def anchors(document: Path) -> set[str]:
    """The fragment ids GitHub gives the document's headings."""
    found: set[str] = set()
    for heading in HEADING.findall(FENCED_BLOCK.sub("", document.read_text())):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").lower()).replace(" ", "-")
        unique, n = slug, 0
        while unique in found:
            n += 1
            unique = f"{slug}-{n}"
        found.add(unique)
    return found


def relative_links(document: Path) -> list[str]:
    targets = LINK.findall(prose(document.read_text()))
    return [target for target in targets if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


def test_configuration_table_is_current() -> None:
    text = DOCUMENT.read_text()
    match = MARKERS.search(text)
    assert match, "docs/configuration.md lost its settings-table markers"
    assert match.group(2).strip() == table().strip(), (
        "docs/configuration.md's settings table is stale: "
        "run `uv run python scripts/settings_table.py --write docs/configuration.md`"
    )


def test_quick_start_is_exactly_two_commands() -> None:
    text = README.read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    assert [command for command in commands if command] == ["make run", "make test"]


def test_readme_is_short() -> None:
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_README_LINES, (
        f"README.md has {lines} lines (at most {MAX_README_LINES}): move detail to docs/"
    )


def test_relative_links_point_at_what_exists() -> None:
    broken = []
    for document in [README, *DOCS]:
        for target in relative_links(document):
            path, _, fragment = target.partition("#")
            resolved = (document.parent / path).resolve() if path else document
            if not resolved.exists():
                broken.append(f"{document.relative_to(ROOT)}: {target} (no such file)")
            elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
                broken.append(f"{document.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_readme_links_every_document() -> None:
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in relative_links(README)}
    wanted = [*DOCS, ROOT / "bench" / "HISTORY.md"]
    missing = [str(path.relative_to(ROOT)) for path in wanted if path.resolve() not in linked]
    assert not missing, f"README.md does not link {missing}"


def test_documented_variables_are_settings() -> None:
    """A variable named in the README or docs/ is one the service reads (or a test's own)."""
    settings = {variable for variable, _, _ in rows(Settings, PREFIX)}
    unknown = set()
    for document in [README, *DOCS]:
        for name in re.findall(r"\bGLASSHOUSE_[A-Z0-9_]*[A-Z0-9]", document.read_text()):
            if name not in settings and not name.startswith("GLASSHOUSE_TEST"):
                unknown.add(f"{document.relative_to(ROOT)}: {name}")
    assert not unknown, sorted(unknown)
