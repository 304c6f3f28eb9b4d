"""The output directory: one run per recipe, resumable, with every result as a file."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import yaml

from toolkit.errors import ToolkitError
from toolkit.recipe import Recipe

logger = logging.getLogger("toolkit")

RECIPE_FILE = "recipe.yaml"
FINAL_FILE = "eval_results.json"  # written last: its presence means the run finished


@dataclass
class RunState:
    resume_from: str | None = None  # the last checkpoint of an interrupted run
    finished: bool = False  # the folder already holds this recipe's finished run


def check_output_dir(recipe: Recipe) -> RunState:
    """Refuse a folder that holds something else; say whether to resume, or that all is done.

    Runs before any work, and writes nothing.
    """
    from transformers.trainer_utils import get_last_checkpoint

    out = recipe.output_dir
    if out.exists() and not out.is_dir():
        raise ToolkitError(f"training.output_dir {out} is a file; choose a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return RunState()
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
    if (out / FINAL_FILE).is_file():
        logger.info("%s already holds the finished run of this recipe (results in %s); nothing to do", out, FINAL_FILE)
        return RunState(finished=True)
    checkpoint = get_last_checkpoint(str(out))
    if checkpoint:
        logger.info("resuming from %s", checkpoint)
    return RunState(resume_from=checkpoint)


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
