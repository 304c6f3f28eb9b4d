"""The output directory: one run per recipe, resumable, with every result as a file."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import yaml

from toolkit.errors import ToolkitError
from toolkit.recipe import Recipe

logger = logging.getLogger("toolkit")

RECIPE_FILE = "recipe.yaml"


def check_output_dir(recipe: Recipe) -> str | None:
    """Refuse a folder that holds something else; return the checkpoint to resume from, if any.

    Runs before any work, and writes nothing.
    """
    from transformers.trainer_utils import get_last_checkpoint

    out = recipe.output_dir
    if out.exists() and not out.is_dir():
        raise ToolkitError(f"training.output_dir {out} is a file; choose a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return None
    saved = out / RECIPE_FILE
    if not saved.is_file():
        raise ToolkitError(
            f"output directory {out} is not empty and holds no toolkit run; choose another training.output_dir"
        )
    previous = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
    current = yaml.safe_load(recipe.to_yaml())
    changed = _differences(previous, current)
    if changed:
        shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changed[:3]) + ("; ..." if len(changed) > 3 else "")
        raise ToolkitError(
            f"output directory {out} holds a run of another recipe ({shown});"
            " choose another training.output_dir, or move that folder away to start over"
        )
    checkpoint = get_last_checkpoint(str(out))
    if checkpoint:
        logger.info("resuming from %s", checkpoint)
    return checkpoint


def _differences(a, b, prefix: str = "") -> list[tuple[str, object, object]]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in list(a) + [k for k in b if k not in a]:
            out += _differences(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    return [] if a == b else [(prefix, a, b)]


def write_recipe(recipe: Recipe) -> None:
    recipe.output_dir.mkdir(parents=True, exist_ok=True)
    (recipe.output_dir / RECIPE_FILE).write_text(recipe.to_yaml(), encoding="utf-8")


def write_json(folder: Path, name: str, obj) -> Path:
    path = Path(folder) / name
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def read_json(folder: Path, name: str):
    path = Path(folder) / name
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
