"""The distributed type a run reports is the one that ran; FSDP or DeepSpeed that accelerate would drop is refused.

On a machine without GPUs accelerate turns an FSDP or DeepSpeed launch into plain data
parallel on the CPU without a word (toolkit/distributed.py says where); `toolkit launch` and
the run's own first step refuse it in one line that names the CPU config to use instead.
"""

import inspect
import json
import sys
import time

import pytest

from tests.conftest import ROOT, free_port, run
from tests.test_bad_input import assert_refused
from toolkit.distributed import check_launch, describe, sharding_applies, summary_line
from toolkit.hardware import has_accelerator

CONFIGS = ROOT / "accelerate_configs"
ACCELERATE_LAUNCH = [sys.executable, "-m", "accelerate.commands.launch"]

no_gpu = pytest.mark.skipif(sharding_applies(), reason="accelerate applies FSDP and DeepSpeed on this machine")
cpu_only = pytest.mark.skipif(has_accelerator(), reason="two processes on the CPU: cpu_2proc.yaml")



def tiny_trainer(output_dir, steps=0):
    """A tiny real Trainer: a one-layer Llama on random token ids (also written into the launched scripts)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32))
    rows = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 64, (8, 16))]
    args = TrainingArguments(output_dir=str(output_dir), max_steps=max(steps, 1), per_device_train_batch_size=2,
                             save_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(),
                             disable_tqdm=True)
    return Trainer(model=model, args=args, train_dataset=rows)


def script_head() -> str:
    """The start of a launched script: the checkout importable, and tiny_trainer."""
    return f"import json, sys\nsys.path.insert(0, {str(ROOT)!r})\n\n" + inspect.getsource(tiny_trainer)


def test_one_process_is_described_as_no_distribution(tmp_path):
    described = describe(tiny_trainer(tmp_path))
    assert described["type"] == "none" and described["world_size"] == 1, described
    assert "requested" not in described
    assert json.loads(json.dumps(described)) == described  # as run_info.json holds it
    assert summary_line(described) == "none (one process)"


@pytest.mark.slow
@cpu_only
def test_two_cpu_processes_are_described_as_ddp_over_gloo(tmp_path):
    script = tmp_path / "describe.py"
    script.write_text(script_head() + """
from toolkit.distributed import describe, summary_line
from toolkit.training import init_processes

state = init_processes()
trainer = tiny_trainer(sys.argv[1], steps=1)
trainer.train()  # accelerate wraps the model as it trains: what ran is what is described
if state.is_main_process:
    described = describe(trainer)
    print("DESCRIBED " + json.dumps({**described, "wrapped": type(trainer.model_wrapped).__name__,
                                     "line": summary_line(described)}), flush=True)
""")
    started = time.time()
    result = run([*ACCELERATE_LAUNCH, "--config_file", str(CONFIGS / "cpu_2proc.yaml"),
                  "--main_process_port", str(free_port()), str(script), str(tmp_path / "out")], timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    found = [line for line in result.stdout.splitlines() if line.startswith("DESCRIBED ")]
    assert len(found) == 1, result.stdout[-3000:]
    described = json.loads(found[0].removeprefix("DESCRIBED "))
    assert described["wrapped"] == "DistributedDataParallel"
    assert {k: described[k] for k in ("type", "world_size", "backend", "accelerate")} == {
        "type": "ddp", "world_size": 2, "backend": "gloo", "accelerate": "MULTI_CPU"}
    assert described["line"] == "DDP over 2 processes (gloo)"
    assert time.time() - started < 150


@pytest.mark.slow
@no_gpu
def test_a_run_launched_with_fsdp_on_cpu_stops_at_once_with_one_line(tmp_path):
    """Plain `accelerate launch` with the FSDP config: each process checks first thing; one line, not one each."""
    script = tmp_path / "first_step.py"
    script.write_text(script_head() + """
from toolkit.distributed import check_launch
from toolkit.errors import exit_on_user_error

exit_on_user_error(check_launch)()
print("not refused", flush=True)
""")
    started = time.time()
    # -q: accelerate's banner for the failed process, without its own traceback.
    result = run([*ACCELERATE_LAUNCH, "-q", "--config_file", str(CONFIGS / "fsdp.yaml"), "--num_processes", "2",
                  "--main_process_port", str(free_port()), str(script)], timeout=120)
    assert result.returncode != 0 and "not refused" not in result.stdout
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [(
        "error: this launch asks for FSDP version 2, which accelerate applies only on GPUs, and this machine has none"
        " (accelerate would silently train plain data parallel on the CPU instead); launch with"
        " accelerate_configs/cpu_2proc.yaml instead")], result.stderr[-3000:]
    assert "exitcode  : 2" in result.stderr  # the refusal's own status, torchrun's root cause
    assert time.time() - started < 40  # the silent process was stopped by the launcher, not left to wait


@no_gpu
def test_the_first_step_names_the_cpu_config_for_the_same_processes():
    from toolkit.errors import ToolkitError

    check_launch({})  # a launch asking for neither: nothing to say
    check_launch({"ACCELERATE_USE_FSDP": "false", "WORLD_SIZE": "4"})
    cases = [
        ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}, "FSDP version 2", "accelerate_configs/cpu.yaml"),
        ({"ACCELERATE_USE_FSDP": "true", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "8", "GROUP_WORLD_SIZE": "1"},
         "FSDP version 1", "accelerate_configs/cpu_2proc.yaml --num_processes 8"),
        ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3", "WORLD_SIZE": "4",
          "LOCAL_WORLD_SIZE": "2", "GROUP_WORLD_SIZE": "2", "MASTER_ADDR": "10.0.0.1"},
         "DeepSpeed ZeRO stage 3",
         "accelerate_configs/cpu_2machines.yaml --num_processes 4 --main_process_ip 10.0.0.1"),
    ]
    for env, asked, config in cases:
        with pytest.raises(ToolkitError) as refused:
            check_launch({"LOCAL_RANK": "0", **env})
        line = str(refused.value)
        assert "\n" not in line and f"asks for {asked}, which accelerate applies only on GPUs" in line, line
        assert line.endswith(f"launch with {config} instead"), line


@no_gpu
@pytest.mark.parametrize("config, options, asked, instead", [
    ("fsdp.yaml", [], "FSDP version 2", "accelerate_configs/cpu_2proc.yaml --num_processes 8"),
    ("fsdp.yaml", ["--num_processes", "2"], "FSDP version 2", "accelerate_configs/cpu_2proc.yaml"),
    ("deepspeed_zero3.yaml", ["--num_processes", "1"], "DeepSpeed ZeRO stage 3", "accelerate_configs/cpu.yaml"),
])
def test_toolkit_launch_refuses_fsdp_or_deepspeed_without_a_gpu_before_starting_anything(
        tmp_path, config, options, asked, instead, toolkit_here, monkeypatch):
    monkeypatch.chdir(ROOT)  # the configs as the user types them, relative to the checkout
    marker = tmp_path / "started"
    script = tmp_path / "script.py"
    script.write_text(f"open({str(marker)!r}, 'w').close()\n")
    result = toolkit_here("launch", f"accelerate_configs/{config}", *options, str(script))
    assert result.returncode == 2
    assert_refused(result, f"accelerate_configs/{config} asks for {asked}, which accelerate applies only on GPUs",
                   f"launch with {instead} instead")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not marker.exists()


def test_the_config_check_alone_stays_the_same_on_every_machine():
    """benchmarks/gpu_check.py --dry-run checks the GPU configs on a CPU: only `toolkit launch` asks about this one."""
    from toolkit.launch import check_launch_config

    assert check_launch_config(CONFIGS / "fsdp.yaml", {"num_processes": 1})["distributed_type"] == "FSDP"
