"""`toolkit launch`: `accelerate launch` with its config file checked first.

accelerate answers a missing config file, an unknown `distributed_type` or a DeepSpeed
config without `deepspeed` installed with a traceback. These checks turn each into one
line that names the fix, then hand over to `accelerate launch` unchanged.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import shutil
import sys
from pathlib import Path

import yaml
from accelerate.utils import DistributedType

from toolkit.errors import ToolkitError

CONFIGS = Path(__file__).resolve().parent.parent / "accelerate_configs"


def check_launch_config(path: str | Path) -> dict:
    """The parsed config, or a ToolkitError naming what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        shipped = ", ".join(sorted(p.name for p in CONFIGS.glob("*.yaml"))) if CONFIGS.is_dir() else ""
        raise ToolkitError(f"accelerate config file not found: {path}"
                           + (f" (the toolkit's are in {CONFIGS}: {shipped})" if shipped else ""))
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark else ""
        raise ToolkitError(f"{path}{where}: YAML syntax error; fix the file") from None
    if not isinstance(config, dict):
        raise ToolkitError(f"{path}: an accelerate config is a mapping of keys (distributed_type, num_processes, ...)")
    kind = str(config.get("distributed_type", "NO"))
    known = [t.value for t in DistributedType]
    if kind not in known:
        close = difflib.get_close_matches(kind.upper(), known, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ToolkitError(f"{path}: unknown distributed_type {kind!r}; {hint}use one of {', '.join(known)}")
    if kind == "DEEPSPEED" and importlib.util.find_spec("deepspeed") is None:
        raise ToolkitError(f"{path} uses DeepSpeed, which is not installed: pip install deepspeed"
                           " (it needs a CUDA toolkit), or launch with accelerate_configs/fsdp.yaml")
    for key in ("num_processes", "num_machines"):
        value = config.get(key, 1)
        if not isinstance(value, int) or value < 1:
            raise ToolkitError(f"{path}: {key} must be a whole number of at least 1, got {value!r}")
    return config


def launch(config_file: str, script: str, args: list[str]) -> None:
    """Check the config and the script, then become `accelerate launch --config_file CONFIG SCRIPT ARGS`."""
    check_launch_config(config_file)
    if not Path(script).is_file():
        raise ToolkitError(f"script not found: {script} (e.g. recipes/pretrain.py)")
    accelerate = shutil.which("accelerate")
    command = [accelerate] if accelerate else [sys.executable, "-m", "accelerate.commands.accelerate_cli"]
    command += ["launch", "--config_file", str(config_file), script, *args]
    sys.stdout.flush()
    os.execv(command[0], command)
