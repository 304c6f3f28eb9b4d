"""The output directory: one run per recipe, resumable, locked while a run writes to it.

A run's folder holds its recipe, checkpoints, results and card. Three files mark its
state: `.toolkit.lock` (held while a run is live), a `checkpoint-N/toolkit-complete`
marker (the checkpoint was written in full), and `eval_results.json` (the run finished).
"""

from __future__ import annotations

import atexit
import fcntl
import json
import logging
import os
import re
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import yaml

from toolkit.errors import ToolkitError
from toolkit.recipe import Recipe

logger = logging.getLogger("toolkit")

RECIPE_FILE = "recipe.yaml"
FINAL_FILE = "eval_results.json"  # written last: its presence means the run finished
LOCK_FILE = ".toolkit.lock"
COMPLETE_MARKER = "toolkit-complete"  # written into a checkpoint once every file of it is on disk
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class RunState:
    resume_from: str | None = None  # the last checkpoint of an interrupted run
    finished: bool = False  # the folder already holds this recipe's finished run


def check_output_dir(recipe: Recipe, lock: bool = True) -> RunState:
    """Refuse a folder that holds something else or that a live run holds; say whether to resume.

    Runs before any work. With `lock` (the main process) it takes the folder's lock for the
    rest of the process's life; nothing else is written, and a run that stops on bad input
    leaves no folder behind.
    """
    out = recipe.output_dir
    if out.exists() and not out.is_dir():
        raise ToolkitError(f"training.output_dir {out} is a file; choose a folder")
    if lock:
        OutputLock(out).acquire()
    if not out.is_dir() or not [p for p in out.iterdir() if p.name != LOCK_FILE]:
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
    checkpoint = last_complete_checkpoint(out, remove_incomplete=lock)
    if checkpoint:
        logger.info("resuming from %s", checkpoint)
    return RunState(resume_from=str(checkpoint) if checkpoint else None)


def checkpoints(out: Path) -> list[Path]:
    """checkpoint-N folders, oldest step first."""
    found = [p for p in Path(out).iterdir() if p.is_dir() and CHECKPOINT.match(p.name)] if Path(out).is_dir() else []
    return sorted(found, key=lambda p: int(CHECKPOINT.match(p.name).group(1)))


def mark_complete(checkpoint: Path) -> None:
    """The last write of a checkpoint: from here on it may be loaded, and older ones rotated away."""
    tmp = checkpoint / f".{COMPLETE_MARKER}.tmp"
    tmp.write_text("complete\n")
    os.replace(tmp, checkpoint / COMPLETE_MARKER)


def last_complete_checkpoint(out: Path, remove_incomplete: bool = False) -> Path | None:
    """The newest checkpoint written in full. One whose save was cut short (a kill, a full
    disk) lacks the marker: it is never loaded, and the main process removes it."""
    complete = None
    for checkpoint in checkpoints(out):
        if (checkpoint / COMPLETE_MARKER).is_file():
            complete = checkpoint
            continue
        logger.warning("%s is incomplete (its save was cut short); skipping it%s",
                       checkpoint, " and removing it" if remove_incomplete else "")
        if remove_incomplete:
            shutil.rmtree(checkpoint, ignore_errors=True)
    return complete


class OutputLock:
    """An exclusive lock on the output folder, held until the process ends.

    A second run into a folder that a live run is writing is refused instead of the two
    interleaving checkpoints. The operating system drops the lock when its process dies,
    even by SIGKILL, so a killed run never blocks its own resume.
    """

    def __init__(self, out: Path):
        self.out = Path(out)
        self.path = self.out / LOCK_FILE
        self.fd = None
        self.created_folder = False

    def acquire(self) -> None:
        self.created_folder = not self.out.exists()
        self.out.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ToolkitError(
                f"output directory {self.out} is being written by a live run ({holder});"
                " wait for it to end, or choose another training.output_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        self.fd = fd
        atexit.register(self.release)

    def release(self) -> None:
        """Unlock; a folder that this run created and left empty (it stopped on bad input) goes too."""
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None
        if self.created_folder and self.out.is_dir() and not any(self.out.iterdir()):
            self.out.rmdir()


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


def write_jsonl(folder: Path, name: str, rows: list[dict]) -> Path:
    """One JSON object per line (UTF-8, characters as they are): rows a reader streams or greps."""
    path = Path(folder) / name
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def read_json(folder: Path, name: str):
    path = Path(folder) / name
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
