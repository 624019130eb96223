"""Prints the configuration table of docs/configuration.md from the Settings model, so the two
never drift (tests/test_readme.py fails when they do). Update the document in place with:
uv run python scripts/settings_table.py --write docs/configuration.md"""

import re
import sys
from pathlib import Path

from pydantic import AliasChoices, BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

from service.settings import Settings

PREFIX = "GLASSHOUSE_"
DOCUMENT = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def rows(model: type[BaseModel], prefix: str) -> list[tuple[str, str, str]]:
    found: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseSettings):
            # A group with its own standard prefix (OTEL_*).
            found += rows(annotation, str(annotation.model_config.get("env_prefix", "")))
            continue
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found += rows(annotation, f"{prefix}{name.upper()}__")
            continue
        variable = f"{prefix}{name.upper()}"
        if isinstance(field.validation_alias, AliasChoices):
            variable = str(field.validation_alias.choices[0])
        found.append((variable, _default(field), field.description or ""))
    return found


def _default(field: FieldInfo) -> str:
    value = field.default
    if value is PydanticUndefined or value is None:
        return "(unset)"
    secret = getattr(value, "get_secret_value", None)
    if secret is not None:
        return "(development placeholder)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[]" if not value else str(value)
    return str(getattr(value, "value", value))


def table() -> str:
    lines = ["| Variable | Default | Meaning |", "|---|---|---|"]
    lines += [
        f"| `{var}` | `{default}` | {meaning} |" for var, default, meaning in rows(Settings, PREFIX)
    ]
    return "\n".join(lines)


MARKERS = re.compile(r"(<!-- settings-table:.*?-->\n)(.*?)(\n<!-- /settings-table -->)", re.S)


def write(document: Path) -> None:
    text = document.read_text()
    updated, count = MARKERS.subn(lambda m: m.group(1) + table() + m.group(3), text)
    if count != 1:
        raise SystemExit(f"{document}: settings-table markers not found")
    document.write_text(updated)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write"]:
        write(Path(sys.argv[2]) if len(sys.argv) > 2 else DOCUMENT)
    else:
        print(table())
