"""The output directory: one run per recipe, resumable, locked while a run writes to it.

A run's folder holds its recipe, checkpoints, results and card. Four files mark its
state: `.toolkit.lock` (held while a run is live), a `checkpoint-N/toolkit-complete`
marker (the checkpoint was written in full), `all_results.json` (the model and every
result are saved) and `eval_results.json` (the run finished: plot and card written too).
Every file the toolkit writes here goes through `write_atomic`, so a full disk or a kill
leaves the old file or the new one, never a torn one.
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
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from toolkit.errors import ToolkitError
from toolkit.recipe import Recipe

logger = logging.getLogger("toolkit")

RECIPE_FILE = "recipe.yaml"
RESULTS_FILE = "all_results.json"  # written once the model and every result are saved
FINAL_FILE = "eval_results.json"  # written last (after plot and card): its presence means the run finished
PUSHED_FILE = ".toolkit-pushed.json"  # where a run was pushed; hidden, so never pushed itself
LOCK_FILE = ".toolkit.lock"
COMPLETE_MARKER = "toolkit-complete"  # written into a checkpoint once every file of it is on disk
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Recipe keys that say where and how fast, not what is trained: a rerun may change them.
UNTRAINED = {"training.output_dir", "data.cache_dir", "data.num_proc", "data.wait_timeout"}


@dataclass
class RunState:
    resume_from: str | None = None  # the last checkpoint of an interrupted run
    finished: bool = False  # the folder already holds this recipe's finished run
    saved: bool = False  # model and results saved, plot/card/finish marker not (the run stopped there)


def check_writable(out: Path) -> None:
    """The folder can be made and written to: refused now, not as a traceback at the first save.
    Tried for real (a file made and removed at once): permissions alone do not say it for root,
    a read-only mount or a full quota."""
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ToolkitError(f"training.output_dir {out}: {existing} is a file, not a folder; choose another training.output_dir")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise ToolkitError(f"training.output_dir {out}: {existing} is not writable ({err.strerror});"
                           " choose a folder you can write to") from None


def check_output_dir(recipe: Recipe, lock: bool = True) -> RunState:
    """Refuse a folder that holds something else or that a live run holds; say whether to resume.

    Runs before any work. With `lock` (the main process) it takes the folder's lock for the
    rest of the process's life; nothing else is written, and a run that stops on bad input
    leaves no folder behind.
    """
    out = recipe.output_dir
    if out.exists() and not out.is_dir():
        raise ToolkitError(f"training.output_dir {out} is a file; choose a folder")
    check_writable(out)
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
    # Where the folder, the data cache and the push go are no part of what was trained: a moved
    # run resumes, each machine may keep its own cache, and a finished run may be rerun with hub.push.
    changed = [c for c in _differences(previous, current) if c[0] not in UNTRAINED and not c[0].startswith("hub.")]
    if changed:
        shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changed[:3]) + ("; ..." if len(changed) > 3 else "")
        raise ToolkitError(
            f"output directory {out} holds a run of another recipe ({shown});"
            " choose another training.output_dir, or move that folder away to start over"
        )
    if _readable_json(out / FINAL_FILE):
        logger.info("%s already holds the finished run of this recipe (results in %s)", out, FINAL_FILE)
        return RunState(finished=True)
    if _readable_json(out / RESULTS_FILE):
        logger.info("%s holds this recipe's saved model and results; writing what is missing (plot, card)", out)
        return RunState(saved=True)
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
    write_atomic(checkpoint / COMPLETE_MARKER, "complete\n")


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
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise ToolkitError(f"cannot write to training.output_dir {self.out} ({err.strerror});"
                               " choose a folder you can write to") from None
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
    """Keys whose values differ between the saved recipe `a` and the current one `b`. A key only the
    current one has was added to the toolkit since the run was saved, which ran at its default:
    no difference. Lists of one length are compared item by item (a source's new key, likewise)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in a:
            out += _differences(a[key], b.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{prefix}[{i}]")]
    return [] if a == b else [(prefix, a, b)]


def write_atomic(path: Path, content: str | bytes) -> Path:
    """The one way a result reaches disk: a temporary file beside it, flushed to the disk, renamed
    over the old one. A reader (or a rerun after a crash or a full disk) sees the whole old file
    or the whole new one; a failed write leaves no temporary file behind."""
    path = Path(path)
    data = content.encode("utf-8") if isinstance(content, str) else content
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_recipe(recipe: Recipe) -> None:
    recipe.output_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(recipe.output_dir / RECIPE_FILE, recipe.to_yaml())


def write_json(folder: Path, name: str, obj) -> Path:
    return write_atomic(Path(folder) / name, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(folder: Path, name: str, rows: list[dict]) -> Path:
    """One JSON object per line (UTF-8, characters as they are): rows a reader streams or greps."""
    return write_atomic(Path(folder) / name, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def read_json(folder: Path, name: str):
    """A result file, or None when it is not there; a damaged one is refused in one line."""
    path = Path(folder) / name
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise ToolkitError(f"{path} is damaged (not valid JSON, {path.stat().st_size} bytes); rerun the recipe"
                           " into the same folder to rewrite it") from None


def _readable_json(path: Path) -> bool:
    """A marker file that is there and whole. One torn by an older, non-atomic toolkit counts as absent."""
    try:
        json.loads(path.read_text(encoding="utf-8"))
        return True
    except (OSError, ValueError, UnicodeDecodeError):
        return False


def check_not_a_run(folder: Path, option: str = "--output_dir") -> None:
    """Refuse, as another command's output, a folder that holds a run or a saved model: its
    eval_results.json (or model) would be overwritten, and a later report or push would publish that."""
    folder = Path(folder)
    kept = [name for name in (RECIPE_FILE, RESULTS_FILE, "config.json", "adapter_config.json") if (folder / name).is_file()]
    kept += [p.name for p in folder.glob("*.safetensors")][:1] if folder.is_dir() else []
    if kept:
        raise ToolkitError(f"{option} {folder} holds a run or a saved model ({kept[0]} is there), whose results this"
                           " would overwrite; choose another folder")
    check_writable(folder)
