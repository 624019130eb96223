"""Prints the README's configuration table from the Settings model, so the two never drift
(tests/test_readme.py fails when they do). Run: uv run python scripts/settings_table.py"""

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from service.settings import Settings

PREFIX = "GLASSHOUSE_"


def rows(model: type[BaseModel], prefix: str) -> list[tuple[str, str, str]]:
    found: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found += rows(annotation, f"{prefix}{name.upper()}__")
            continue
        variable = f"{prefix}{name.upper()}"
        if name == "database_url":
            variable = "DATABASE_URL"
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


if __name__ == "__main__":
    print(table())
