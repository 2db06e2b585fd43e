"""The README's recipe reference is generated from the schema; it must be current."""

from __future__ import annotations

import json

from qwenrecipes.recipe.docs import BEGIN, END, recipe_reference_markdown
from qwenrecipes.recipe.load import recipe_schema
from tests.conftest import REPO


def test_readme_reference_is_current() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert block == recipe_reference_markdown(), "run `python -m qwenrecipes.recipe.docs` to regenerate"


def test_every_leaf_field_is_documented_with_default() -> None:
    def leaves(node: dict, prefix: str = ""):  # type: ignore[no-untyped-def]
        for key, sub in node.get("properties", {}).items():
            branch = next((s for s in sub.get("oneOf", []) if s.get("type") == "object"), None)
            if sub.get("type") == "object" and "properties" in sub:
                yield from leaves(sub, f"{prefix}{key}.")
            elif branch is not None:
                yield from leaves(branch, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", sub

    for path, sub in leaves(recipe_schema()):
        assert sub.get("description"), path
        required_leaf = path in ("model.name_or_path", "data.train.path", "data.eval.path")
        assert "default" in sub or required_leaf, path


def test_schema_is_valid_draft_2020_12() -> None:
    import jsonschema

    schema = recipe_schema()
    assert schema["$schema"].endswith("2020-12/schema")
    jsonschema.Draft202012Validator.check_schema(schema)
    json.dumps(schema)
