"""The README is part of the product: its configuration table must match the settings."""

import re
from pathlib import Path

from scripts.settings_table import MARKERS, table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_configuration_table_is_current() -> None:
    text = README.read_text()
    match = MARKERS.search(text)
    assert match, "README lost its settings-table markers"
    assert match.group(2).strip() == table().strip(), (
        "README configuration table is stale: "
        "run `uv run python scripts/settings_table.py --write README.md`"
    )


def test_quick_start_is_exactly_two_commands() -> None:
    text = README.read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    assert [command for command in commands if command] == ["make run", "make test"]
