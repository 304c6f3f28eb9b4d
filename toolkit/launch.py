"""`toolkit launch`: `accelerate launch` with its config file checked first, and a failed process told in one line.

accelerate answers a missing config file, an unknown `distributed_type` or a DeepSpeed
config without `deepspeed` installed with a traceback, an FSDP or DeepSpeed config on a
machine without GPUs with a silent run of plain data parallel (toolkit/distributed.py), and
a process of the run that dies with two more (torchrun's and its own). These checks turn
each into one line that names the fix; the launch itself is accelerate's, run in this
process as `accelerate launch` runs it.
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
import signal
import subprocess
import sys
from pathlib import Path

import yaml
from accelerate.commands.launch import launch_command, launch_command_parser
from accelerate.utils import DistributedType
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from toolkit.distributed import check_launch_config as check_sharding_config
from toolkit.errors import ToolkitError

CONFIGS = Path(__file__).resolve().parent.parent / "accelerate_configs"

# `toolkit launch` options passed on to `accelerate launch` (each overrides the config's key of that name).
LAUNCH_OPTIONS = {"num_processes": int, "num_machines": int, "machine_rank": int,
                  "main_process_ip": str, "main_process_port": int}


def check_launch_config(path: str | Path, overrides: dict | None = None, *, this_machine: bool = False) -> dict:
    """The parsed config with `overrides` applied, or a ToolkitError naming what is wrong with it.

    With `this_machine`, also whether accelerate would apply it here: FSDP or DeepSpeed on a
    machine without GPUs is refused (toolkit/distributed.py), before DeepSpeed's "not
    installed", which installing would not cure. Without, the config is checked as it would be
    on any machine (benchmarks/gpu_check.py --dry-run checks the GPU configs on a CPU).
    """
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
    config.update({k: v for k, v in (overrides or {}).items() if v is not None})
    kind = str(config.get("distributed_type", "NO"))
    known = [t.value for t in DistributedType]
    if kind not in known:
        close = difflib.get_close_matches(kind.upper(), known, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ToolkitError(f"{path}: unknown distributed_type {kind!r}; {hint}use one of {', '.join(known)}")
    for key in ("num_processes", "num_machines"):
        value = config.get(key, 1)
        if not isinstance(value, int) or value < 1:
            raise ToolkitError(f"{path}: {key} must be a whole number of at least 1, got {value!r}")
    machines, rank = config.get("num_machines", 1), config.get("machine_rank", 0)
    if not isinstance(rank, int) or not 0 <= rank < machines:
        raise ToolkitError(f"{path}: machine_rank must be 0 to {machines - 1} (num_machines {machines}), got {rank!r}")
    if config["num_processes"] % machines:
        raise ToolkitError(f"{path}: num_processes ({config['num_processes']}) counts the processes of all"
                           f" {machines} machines and must divide evenly among them")
    if machines > 1 and not config.get("main_process_ip"):
        raise ToolkitError(f"{path}: num_machines is {machines}, so main_process_ip (the address of the machine"
                           " of rank 0, reachable from the others) is needed: set it or pass --main_process_ip")
    if this_machine:
        check_sharding_config(path, config)
    if kind == "DEEPSPEED" and importlib.util.find_spec("deepspeed") is None:
        raise ToolkitError(f"{path} uses DeepSpeed, which is not installed: pip install deepspeed"
                           " (it needs a CUDA toolkit), or launch with accelerate_configs/fsdp.yaml")
    return config


def launch(config_file: str, script: str, args: list[str], options: dict | None = None) -> None:
    """Check the config and the script, then run `accelerate launch --config_file CONFIG [OPTIONS] SCRIPT ARGS`."""
    options = {k: v for k, v in (options or {}).items() if v is not None}
    check_launch_config(config_file, options, this_machine=True)
    if not Path(script).is_file():
        raise ToolkitError(f"script not found: {script} (e.g. recipes/pretrain.py)")
    command = ["--config_file", str(config_file)]
    for key, value in options.items():
        command += [f"--{key}", str(value)]
    parsed = launch_command_parser().parse_args([*command, script, *args])
    # torchrun logs each failed process at ERROR level with its own banner; the line below says it once.
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").setLevel(logging.CRITICAL)
    sys.stdout.flush()
    try:
        launch_command(parsed)
    except ChildFailedError as err:  # torchrun: several processes, one machine or many
        rank, failure = err.get_first_failure()
        sys.exit(_failed(f"process rank {rank} (pid {failure.pid})", failure.exitcode))
    except subprocess.CalledProcessError as err:  # one process, started by accelerate itself
        sys.exit(_failed("the process", err.returncode))


def _failed(who: str, status: int) -> int:
    """The launcher's exit status for a failed process; one line when nothing else will say why.

    A process that exited with a status said why itself (the toolkit's one line, or its
    traceback); one killed by a signal could not, so the line is said here.
    """
    if status >= 0:
        return status or 1
    try:
        name = signal.Signals(-status).name
    except ValueError:
        name = f"signal {-status}"
    sys.stdout.flush()
    print(f"error: {who} was killed by {name} and the run stopped; run the same command again"
          " (on every machine) to resume from the last complete checkpoint", file=sys.stderr, flush=True)
    return 128 - status
