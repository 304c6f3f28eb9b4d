"""Which kind of distributed training a run asked for, whether accelerate will apply it here, and what ran.

accelerate applies FSDP and DeepSpeed only on a device with a distributed backend (CUDA's
NCCL and the like). Without one the toolkit hands accelerate the CPU
(`PartialState(cpu=True)` in toolkit.training.init_processes); accelerate then makes the run
MULTI_CPU (accelerate/state.py, `_prepare_backend`), never turns that into FSDP (only the
MULTI_GPU family is, in `AcceleratorState.__init__`) nor into DeepSpeed (`... and not cpu`),
and wraps the model in plain DistributedDataParallel over gloo (accelerate/accelerator.py,
`prepare_model`, the MULTI_CPU branch), without a word. A launch or a config asking for either
is refused here in one line that names the CPU config to use instead; `describe` records
what actually ran.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from accelerate.utils import DistributedType

from toolkit.errors import ToolkitError
from toolkit.hardware import has_accelerator

CONFIGS = Path(__file__).resolve().parent.parent / "accelerate_configs"

# accelerate's data-parallel types, one per device family; accelerate wraps the model in DDP for each.
_DATA_PARALLEL = {t for t in DistributedType if t.value.startswith("MULTI_")}

# How long a process other than its machine's first waits, after the refusal, for the launcher to
# stop it: only the first says the line, so the console shows it once and not once per process.
SILENT_WAIT_S = 60


def _true(value: object) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def sharding_applies() -> bool:
    """Whether accelerate would apply FSDP or DeepSpeed in a run of the toolkit on this machine.

    It does only on a device with a distributed backend (accelerate's
    `get_distributed_backend`: nccl for CUDA, ...), and only when the toolkit does not hand it
    the CPU, which it does wherever `has_accelerator()` is false. An Apple GPU (MPS) has no
    distributed backend: no FSDP there either.
    """
    if not has_accelerator():
        return False
    try:
        from accelerate.utils.imports import get_distributed_backend, get_torch_accelerator_backend
    except ImportError:  # an older accelerate: CUDA is the device it shards on
        import torch

        return torch.cuda.is_available()
    device, _ = get_torch_accelerator_backend()
    return get_distributed_backend(device) is not None


def requested(env: Mapping[str, str] | None = None) -> str | None:
    """What the launcher asked of accelerate beyond data parallelism ("FSDP version 2",
    "DeepSpeed ZeRO stage 3"), from the variables `accelerate launch` exports to each process
    (accelerate/utils/launch.py: prepare_multi_gpu_env, prepare_deepspeed_cmd_env); None when neither."""
    env = os.environ if env is None else env
    if _true(env.get("ACCELERATE_USE_DEEPSPEED", "")):
        stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
        return f"DeepSpeed ZeRO stage {stage}" if stage else "DeepSpeed"
    if _true(env.get("ACCELERATE_USE_FSDP", "")):
        return f"FSDP version {env.get('FSDP_VERSION', '1')}"
    return None


def requested_by_config(config: Mapping) -> str | None:
    """The same, from a parsed accelerate config file (its distributed_type and fsdp/deepspeed sections)."""
    kind = str(config.get("distributed_type", "NO"))
    if kind == DistributedType.DEEPSPEED.value:
        stage = (config.get("deepspeed_config") or {}).get("zero_stage")
        return f"DeepSpeed ZeRO stage {stage}" if stage is not None else "DeepSpeed"
    if kind == DistributedType.FSDP.value:
        return f"FSDP version {(config.get('fsdp_config') or {}).get('fsdp_version', 1)}"
    return None


def _shown(path: Path) -> str:
    """A path as the user would type it: relative to the working folder when under it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def cpu_config(processes: int, machines: int = 1, main_ip: str | None = None) -> str:
    """The shipped accelerate config (and the options to pass with it) that runs `processes`
    data-parallel processes on `machines` machines without GPUs."""
    if processes <= 1 and machines <= 1:
        return _shown(CONFIGS / "cpu.yaml")
    if machines <= 1:
        return _shown(CONFIGS / "cpu_2proc.yaml") + ("" if processes == 2 else f" --num_processes {processes}")
    shown = _shown(CONFIGS / "cpu_2machines.yaml")
    if machines != 2:
        shown += f" --num_machines {machines}"
    if processes != 2:
        shown += f" --num_processes {processes}"
    if main_ip and main_ip not in ("127.0.0.1", "localhost"):
        shown += f" --main_process_ip {main_ip}"
    return shown


def refusal(who: str, asked: str, processes: int, machines: int = 1, main_ip: str | None = None) -> str:
    """The one line: what was asked, that accelerate applies it only on GPUs, which config to use instead."""
    return (f"{who} asks for {asked}, which accelerate applies only on GPUs, and this machine has none"
            " (accelerate would silently train plain data parallel on the CPU instead); launch with"
            f" {cpu_config(processes, machines, main_ip)} instead")


def check_launch(env: Mapping[str, str] | None = None) -> None:
    """Refuse, at the very start of a run's process, a launch asking for FSDP or DeepSpeed
    where accelerate will not apply it (no GPU). Call before accelerate's PartialState exists.

    Every process of the run finds the same; only each machine's first (LOCAL_RANK 0) raises
    the ToolkitError that becomes the one `error:` line. The others wait for the launcher
    (torchrun) to stop them once the first has exited, and leave with the same status,
    silently, if it does not within SILENT_WAIT_S: one line, not one per process.
    """
    env = os.environ if env is None else env
    asked = requested(env)
    if asked is None or sharding_applies():
        return
    processes = int(env.get("WORLD_SIZE", "1"))
    local = int(env.get("LOCAL_WORLD_SIZE", str(processes)))
    machines = int(env.get("GROUP_WORLD_SIZE", str(max(1, processes // max(1, local)))))
    line = refusal("this launch", asked, processes, machines, env.get("MASTER_ADDR"))
    if int(env.get("LOCAL_RANK", "0")) != 0:
        time.sleep(SILENT_WAIT_S)
        sys.exit(2)
    raise ToolkitError(line)


def check_launch_config(path: str | Path, config: Mapping) -> None:
    """`toolkit launch`'s check of a parsed accelerate config (overrides applied), before anything starts."""
    asked = requested_by_config(config)
    if asked is None or sharding_applies():
        return
    raise ToolkitError(refusal(str(path), asked, int(config.get("num_processes", 1)),
                               int(config.get("num_machines", 1)), config.get("main_process_ip")))


def describe(trainer) -> dict:
    """What ran, from the Trainer's accelerator once it is set up: for run_info.json.

    type: "none" (one process, nothing wrapped), "ddp", "fsdp", "deepspeed", or accelerate's own
    name lowercased for the rest (xla, megatron_lm); fsdp_version for FSDP, zero_stage for
    DeepSpeed; world_size; backend (gloo, nccl, ...; None for one process); accelerate: the
    DistributedType itself (MULTI_CPU: DDP on CPUs); requested: what the launch or the
    training arguments asked for, only when it is not what ran.
    """
    state = trainer.accelerator.state
    kind = state.distributed_type
    world = int(state.num_processes)
    out: dict = {}
    if kind == DistributedType.FSDP:
        out = {"type": "fsdp", "fsdp_version": int(getattr(state.fsdp_plugin, "fsdp_version", 1) or 1)}
    elif kind == DistributedType.DEEPSPEED:
        plugin = state.deepspeed_plugin
        # The stage DeepSpeed runs is its config's (a deepspeed_config_file's own, or the one accelerate built).
        stage = (getattr(plugin, "deepspeed_config", None) or {}).get("zero_optimization", {}).get("stage")
        stage = getattr(plugin, "zero_stage", None) if stage is None else stage
        out = {"type": "deepspeed", "zero_stage": int(stage) if stage is not None else None}
    elif kind in _DATA_PARALLEL and (kind == DistributedType.MULTI_CPU or world > 1):
        out = {"type": "ddp"}  # accelerate wraps MULTI_CPU in DDP even for one process (prepare_model)
    elif kind in _DATA_PARALLEL or kind == DistributedType.NO:
        out = {"type": "none"}
    else:
        out = {"type": kind.value.lower()}
    out.update(world_size=world, backend=getattr(state, "backend", None), accelerate=kind.value)
    # accelerate sets ACCELERATE_USE_FSDP / _DEEPSPEED itself when a plugin comes from the training
    # arguments (accelerate/accelerator.py, Accelerator.__init__), without FSDP_VERSION: that is in fsdp_config.
    asked = requested()
    args = getattr(trainer, "args", None)
    if asked and asked.startswith("FSDP") and "FSDP_VERSION" not in os.environ and getattr(args, "fsdp", None):
        asked = f"FSDP version {(getattr(args, 'fsdp_config', None) or {}).get('version', 1)}"
    if asked and not asked.lower().startswith(out["type"]):
        out["requested"] = asked
    return out


def summary_line(described: dict) -> str:
    """The end-of-run summary's value for "distributed", e.g. "DDP over 2 processes (gloo)"."""
    kind, world = described.get("type"), described.get("world_size", 1)
    processes = f"{world} process" + ("" if world == 1 else "es")
    backend = f" ({described['backend']})" if described.get("backend") else ""
    if kind == "none":
        text = "none (one process)" if world == 1 else f"none ({processes})"
    elif kind == "ddp":
        text = f"DDP over {processes}{backend}"
    elif kind == "fsdp":
        text = f"FSDP{described.get('fsdp_version') or ''} over {processes}{backend}"
    elif kind == "deepspeed":
        stage = described.get("zero_stage")
        text = f"DeepSpeed{'' if stage is None else f' ZeRO-{stage}'} over {processes}{backend}"
    else:
        text = f"{kind} over {processes}{backend}"
    if described.get("requested"):
        text += f"; {described['requested']} was asked for and not applied"
    return text
