"""Faults, in real subprocesses: SIGKILL at three moments then resume, a diverging loss, two runs in one folder."""

import copy
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import PRETRAIN, ROOT, TINY_RECIPE, run, run_pretrain, write_recipe

KILL = ROOT / "tests" / "kill_during.py"


@pytest.fixture(scope="module")
def kill_recipe(tmp_path_factory):
    """Eight steps, a checkpoint every 2 (at most 2 kept), an evaluation every 4; and its uninterrupted run."""
    folder = tmp_path_factory.mktemp("kill")
    recipe = copy.deepcopy(TINY_RECIPE)
    recipe["training"].update(max_steps=8, save_steps=2, eval_steps=4, save_total_limit=2,
                              output_dir=str(folder / "reference"))
    recipe["data"]["cache_dir"] = str(folder / "cache")
    path = write_recipe(folder, recipe)
    result = run_pretrain("--config", str(path))
    assert result.returncode == 0, result.stderr[-3000:]
    return folder, path


@pytest.mark.slow
@pytest.mark.parametrize("point, step, resumes_from", [
    ("step", 5, 4),  # between checkpoints
    ("save", 6, 4),  # checkpoint-6 half written: model on disk, optimizer not
    ("eval", 4, 2),  # in the middle of the evaluation at step 4, before its checkpoint
])
def test_sigkill_then_rerun_ends_with_the_uninterrupted_weights(kill_recipe, point, step, resumes_from):
    folder, path = kill_recipe
    out = folder / point
    killed = run([sys.executable, str(KILL), point, str(step), str(PRETRAIN), "--config", str(path),
                  f"training.output_dir={out}"])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (out / "model.safetensors").exists()
    if point == "save":
        assert (out / "checkpoint-6" / "model.safetensors").is_file()  # really cut short mid-save
        assert not (out / "checkpoint-6" / "optimizer.pt").exists()

    resumed = run_pretrain("--config", str(path), f"training.output_dir={out}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {out / f'checkpoint-{resumes_from}'}" in resumed.stdout
    if point == "save":
        assert "checkpoint-6 is incomplete" in resumed.stdout
    reference, final = load_file(folder / "reference" / "model.safetensors"), load_file(out / "model.safetensors")
    assert reference.keys() == final.keys()
    for name in reference:
        assert torch.equal(reference[name], final[name]), name
    # save_total_limit still holds, and every checkpoint left is a complete one.
    left = sorted(p.name for p in out.glob("checkpoint-*"))
    assert left == ["checkpoint-6", "checkpoint-8"]
    assert all((out / name / "toolkit-complete").is_file() for name in left)


@pytest.mark.slow
def test_a_diverging_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny, tmp_path):
    # Adam moves every weight by about the learning rate: 1e30 overflows within two steps.
    tiny["training"].update(learning_rate=1.0e30, lr_scheduler_type="constant", max_grad_norm=0.0,
                            max_steps=30, save_steps=1, eval_steps=100)
    result = run_pretrain("--config", str(write_recipe(tmp_path, tiny)))
    assert result.returncode == 2
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "NaN or infinite" in error[0] and "learning_rate" in error[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    out = tmp_path / "out"
    assert not (out / "eval_results.json").exists()
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert checkpoints, "the steps before the divergence were saved"
    assert str(checkpoints[-1]) in error[0]
    for checkpoint in checkpoints:  # not one checkpoint holds a NaN or infinite weight
        weights = load_file(checkpoint / "model.safetensors")
        assert all(torch.isfinite(w).all() for w in weights.values()), checkpoint
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoints[-1])
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


@pytest.mark.slow
def test_a_second_run_into_a_live_runs_folder_is_refused(tiny, tmp_path):
    tiny["training"].update(max_steps=100000, save_steps=1000, eval_steps=100000)
    path = write_recipe(tmp_path, tiny)
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    first = subprocess.Popen([sys.executable, str(PRETRAIN), "--config", str(path)], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.time() + 120
        while not (out / "recipe.yaml").is_file():  # the first run is training
            assert first.poll() is None and time.time() < deadline, "the first run did not start"
            time.sleep(0.5)
        second = run_pretrain("--config", str(path))
        assert second.returncode == 2
        assert second.stderr.strip().splitlines()[-1].startswith("error: output directory")
        assert "being written by a live run" in second.stderr and f"pid {first.pid}" in second.stderr
        assert first.poll() is None  # the live run goes on
    finally:
        first.kill()
        first.wait()
    # The operating system dropped the killed run's lock: the folder can be taken again.
    from toolkit.outputs import OutputLock

    lock = OutputLock(out)
    lock.acquire()
    lock.release()
    assert (out / "recipe.yaml").is_file()  # the killed run's files stay for its resume
