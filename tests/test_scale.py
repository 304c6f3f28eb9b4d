"""Several machines, proven on one: two launches of accelerate_configs/cpu_2machines.yaml joined over the
loopback address, each "machine" with its own home (so its own data cache) and one shared output folder."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import PRETRAIN, ROOT, TINY_RECIPE, free_port, run, write_recipe

CONFIG = ROOT / "accelerate_configs" / "cpu_2machines.yaml"
KILL = ROOT / "tests" / "kill_during.py"
SURVIVOR_TIMEOUT = 60  # seconds from one process's death to the other's exit (a lost gloo peer raises at once)



def two_machines(folder: Path, args: list[str], kill_rank1_at: int | None = None, timeout: int = 300) -> list[dict]:
    """`toolkit launch` on machine ranks 0 and 1 at once; each one's exit status, output and end time."""
    port, started, attempt = free_port(), [], len(list(folder.glob("machine0-*.out")))
    with contextlib.ExitStack() as files:
        for rank in (0, 1):
            home = folder / f"machine{rank}"
            home.mkdir(exist_ok=True)
            log, err = (files.enter_context((folder / f"machine{rank}-{attempt}.{kind}").open("w+")) for kind in ("out", "err"))
            script = [str(KILL), "step", str(kill_rank1_at), str(PRETRAIN)] if rank == 1 and kill_rank1_at else [str(PRETRAIN)]
            env = {**os.environ, "HOME": str(home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                   "TOKENIZERS_PARALLELISM": "false"}
            process = subprocess.Popen(
                [sys.executable, "-m", "toolkit.cli", "launch", str(CONFIG), "--machine_rank", str(rank),
                 "--main_process_port", str(port), *script, *args], cwd=ROOT, stdout=log, stderr=err, env=env)
            started.append((process, log, err))
        deadline, ended = time.time() + timeout, {}
        while len(ended) < 2:
            for rank, (process, _, _) in enumerate(started):
                if rank not in ended and process.poll() is not None:
                    ended[rank] = time.time()
            if time.time() > deadline:
                for process, _, _ in started:
                    process.kill()
                pytest.fail(f"the two machines did not end within {timeout} s")
            time.sleep(0.2)
        results = []
        for rank, (process, log, err) in enumerate(started):
            log.seek(0)
            err.seek(0)
            results.append({"returncode": process.returncode, "stdout": log.read(), "stderr": err.read(),
                            "ended": ended[rank]})
    return results


def losses(out: Path) -> list[float]:
    return [h["loss"] for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in h]


def prepared(home: Path) -> dict[Path, int]:
    """The data caches this machine prepared: stats file -> its modification time."""
    return {p: p.stat().st_mtime_ns for p in (home / "toolkit-cache").glob("*/*/stats.json")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Six steps, a checkpoint every 2; on two "machines" of batch 4 and on one process of batch 8."""
    folder = tmp_path_factory.mktemp("machines")
    recipe = copy.deepcopy(TINY_RECIPE)
    recipe["training"].update(max_steps=6, save_steps=2, eval_steps=6, per_device_train_batch_size=4)
    recipe["data"]["cache_dir"] = "~/toolkit-cache"  # the same recipe on both: each machine's own home
    path = write_recipe(folder, recipe)
    two = two_machines(folder, ["--config", str(path), f"training.output_dir={folder / 'two'}"])
    for rank, result in enumerate(two):
        assert result["returncode"] == 0, f"machine {rank}: " + result["stderr"][-3000:]
    one = run([sys.executable, str(PRETRAIN), "--config", str(path), f"training.output_dir={folder / 'one'}",
               "training.per_device_train_batch_size=8"], env={"HOME": str(folder / "machine0")})
    assert one.returncode == 0, one.stderr[-3000:]
    return folder, path, two, one


@pytest.mark.slow
def test_two_machines_on_loopback_train_as_one_process_at_the_same_global_batch(runs):
    folder, _, two, one = runs
    assert "run finished" in two[0]["stdout"] and "run finished" not in two[1]["stdout"]  # summary from rank 0 only
    assert json.loads((folder / "two" / "run_info.json").read_text())["world_size"] == 2
    for rank in (0, 1):  # each machine prepared the data once, in its own cache
        assert len(prepared(folder / f"machine{rank}")) == 1, rank
    assert "loaded from cache" in one.stdout  # the same data: machine 0's cache serves the one process

    a, b = losses(folder / "one"), losses(folder / "two")
    first, final = load_file(folder / "one" / "model.safetensors"), load_file(folder / "two" / "model.safetensors")
    difference = max((final[name] - first[name]).abs().max().item() for name in first)
    print(f"\none process:  {a}\ntwo machines: {b}\nmax weight difference {difference:.3g}")
    assert len(a) == 6 and b == pytest.approx(a, rel=1e-4)
    for name in first:
        assert torch.allclose(final[name], first[name], rtol=1e-4, atol=1e-4 * first[name].abs().max().item()), name


@pytest.mark.slow
def test_sigkill_of_one_machine_stops_the_other_in_one_line_and_the_rerun_resumes(runs):
    folder, path, _, _ = runs
    args = ["--config", str(path), f"training.output_dir={folder / 'killed'}"]
    survivor, killed = two_machines(folder, args, kill_rank1_at=5)  # after checkpoint-4, before checkpoint-6

    assert killed["returncode"] == 128 + 9
    assert survivor["returncode"] == 1
    waited = survivor["ended"] - killed["ended"]
    print(f"\nthe other machine ended {waited:.1f} s after the kill")
    assert waited < SURVIVOR_TIMEOUT
    for result, says in ((killed, "was killed by SIGKILL"), (survivor, "lost contact with another process")):
        errors = [line.strip() for line in result["stderr"].splitlines() if "error:" in line]
        print(errors)
        assert len(errors) == 1 and says in errors[0] and "resume" in errors[0], result["stderr"][-3000:]
        assert "Traceback" not in result["stderr"]
    assert not (folder / "killed" / "model.safetensors").exists()

    caches = {rank: prepared(folder / f"machine{rank}") for rank in (0, 1)}
    survivor, other = two_machines(folder, args)
    for rank, result in enumerate((survivor, other)):
        assert result["returncode"] == 0, f"machine {rank}: " + result["stderr"][-3000:]
    assert f"resuming from {folder / 'killed' / 'checkpoint-4'}" in survivor["stdout"]
    assert {rank: prepared(folder / f"machine{rank}") for rank in (0, 1)} == caches  # the rerun prepared nothing
    assert "loaded from cache" in survivor["stdout"]
    reference, final = load_file(folder / "two" / "model.safetensors"), load_file(folder / "killed" / "model.safetensors")
    assert losses(folder / "killed") == losses(folder / "two")
    for name in reference:
        assert torch.equal(final[name], reference[name]), name


def test_launch_refuses_a_machine_rank_outside_the_machines(toolkit_here):
    result = toolkit_here("launch", str(CONFIG), "--machine_rank", "2", str(PRETRAIN))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {CONFIG}: machine_rank must be 0 to 1 (num_machines 2), got 2"
