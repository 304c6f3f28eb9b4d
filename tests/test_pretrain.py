"""The pretraining recipe end to end, in real subprocesses: outputs, cache, resume, launchers."""

import json
import shutil
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import PRETRAIN, ROOT, run, run_pretrain, write_recipe


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One tiny run shared by the tests that only read its outputs."""
    from tests.conftest import TINY_RECIPE
    import copy

    folder = tmp_path_factory.mktemp("run")
    recipe = copy.deepcopy(TINY_RECIPE)
    recipe["training"].update(output_dir=str(folder / "out"), hub_token="hf_NEVERWRITTEN123")
    recipe["data"]["cache_dir"] = str(folder / "cache")
    path = write_recipe(folder, recipe)
    result = run_pretrain("--config", str(path), "evaluation.max_new_tokens=8")
    assert result.returncode == 0, result.stderr[-3000:]
    return folder, path, result


def test_run_writes_a_loadable_model_and_every_result(finished_run):
    folder, _, result = finished_run
    out = folder / "out"
    for name in ["model.safetensors", "config.json", "tokenizer.json", "recipe.yaml", "eval_results.json",
                 "trainer_state.json", "data_stats.json", "samples.json", "all_results.json"]:
        assert (out / name).is_file(), name
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.vocab_size == len(tok) == 400
    assert model.config._attn_implementation == "sdpa"
    ids = tok("The import statement", return_tensors="pt")
    assert torch.isfinite(model(**ids).logits).all()

    results = json.loads((out / "eval_results.json").read_text())
    assert {"eval_loss", "eval_perplexity", "init_eval_perplexity", "init_eval_loss"} <= set(results)
    assert results["eval_perplexity"] == pytest.approx(2.718281828 ** results["eval_loss"], rel=1e-6)
    assert results["eval_perplexity"] < results["init_eval_perplexity"]
    samples = json.loads((out / "samples.json").read_text())
    assert samples[0]["prompt"] == "The" and isinstance(samples[0]["completion"], str)
    stats = json.loads((out / "data_stats.json").read_text())
    assert stats["cleaning"]["documents_in"] == 150 and "deduplicate" in stats["cleaning"]
    assert stats["train_blocks"] > 0 and stats["from_cache"] is False
    assert "deduplicate: documents removed" in result.stdout  # counts are logged too
    assert "perplexity before" in result.stdout and "perplexity after" in result.stdout


def test_no_secret_reaches_the_output_directory(finished_run):
    folder, _, result = finished_run
    files = [p for p in (folder / "out").rglob("*") if p.is_file()]
    assert any(p.name == "training_args.bin" for p in files)  # pickled arguments are searched too
    for path in files:
        assert b"hf_NEVERWRITTEN123" not in path.read_bytes(), path
    assert "hf_NEVERWRITTEN123" not in result.stdout + result.stderr


def test_rerun_of_a_finished_run_changes_nothing(finished_run):
    folder, path, _ = finished_run
    out = folder / "out"
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = run_pretrain("--config", str(path), "evaluation.max_new_tokens=8")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already holds the finished run" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_same_data_in_a_new_run_comes_from_the_cache(finished_run, tmp_path):
    folder, path, _ = finished_run
    again = run_pretrain("--config", str(path), f"training.output_dir={tmp_path / 'second'}", "training.max_steps=1",
                         "training.save_strategy=no", "evaluation.max_new_tokens=2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "loaded from cache" in again.stdout
    assert "tokenizing" not in again.stderr + again.stdout  # no second tokenization
    assert json.loads((tmp_path / "second" / "data_stats.json").read_text())["from_cache"] is True


def test_rerun_after_an_interruption_continues_from_the_last_checkpoint(tiny, tmp_path):
    path = write_recipe(tmp_path, tiny)
    first = run_pretrain("--config", str(path))
    assert first.returncode == 0, first.stderr[-3000:]
    out = tmp_path / "out"
    # As if the run had been stopped right after its step-2 checkpoint: only what existed then stays.
    shutil.rmtree(out / "checkpoint-4")
    for leftover in out.iterdir():
        if leftover.is_file() and leftover.name not in {"recipe.yaml", "init_eval_results.json"}:
            leftover.unlink()
    resumed = run_pretrain("--config", str(path))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout and "checkpoint-2" in resumed.stdout
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert (out / "model.safetensors").is_file()


def test_continued_pretraining_from_saved_weights(finished_run, tmp_path):
    folder, _, _ = finished_run
    base = folder / "out"
    recipe = {
        "model": {"name_or_path": str(base)},
        "data": {"sources": [{"builtin": "python-docs", "limit": 80}], "block_size": 64, "cache_dir": str(tmp_path / "cache")},
        "training": {"output_dir": str(tmp_path / "cont"), "max_steps": 2, "per_device_train_batch_size": 4,
                     "report_to": [], "save_strategy": "no"},
        "evaluation": {"max_new_tokens": 3},
    }
    result = run_pretrain("--config", str(write_recipe(tmp_path, recipe)))
    assert result.returncode == 0, result.stderr[-3000:]
    stats = json.loads((tmp_path / "cont" / "data_stats.json").read_text())
    assert stats["tokenizer"] == {"pretrained": str(base), "vocab_size": 400}  # the model's own tokenizer
    results = json.loads((tmp_path / "cont" / "eval_results.json").read_text())
    # Starting from trained weights, the model is far better than chance from the first step.
    assert results["init_eval_perplexity"] < 400


def test_early_stopping_on_evaluation_loss(tiny, tmp_path):
    tiny["training"].update(max_steps=20, eval_steps=2, save_steps=2)
    # No improvement can beat a threshold of 100 nats, so the run stops after `patience` evaluations.
    tiny["evaluation"].update(early_stopping_patience=2, early_stopping_threshold=100.0)
    result = run_pretrain("--config", str(write_recipe(tmp_path, tiny)))
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 6


def test_accelerate_launch_with_the_cpu_config(tiny, tmp_path):
    tiny["training"].update(max_steps=2, save_strategy="no")
    path = write_recipe(tmp_path, tiny)
    result = run(["accelerate", "launch", "--config_file", str(ROOT / "accelerate_configs" / "cpu.yaml"),
                  str(PRETRAIN), "--config", str(path)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "eval_results.json").is_file()


def test_two_processes_on_cpu_train_together(tiny, tmp_path):
    tiny["training"].update(max_steps=2, save_strategy="no", per_device_train_batch_size=2)
    path = write_recipe(tmp_path, tiny)
    result = run(["accelerate", "launch", "--config_file", str(ROOT / "accelerate_configs" / "cpu_2proc.yaml"),
                  str(PRETRAIN), "--config", str(path)])
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((tmp_path / "out" / "run_info.json").read_text())
    assert info["world_size"] == 2
    assert result.stdout.count("run finished") == 1  # the summary comes from the main process only


def test_default_recipe_runs_with_overrides_only(tmp_path):
    result = run_pretrain(
        f"training.output_dir={tmp_path / 'out'}", f"data.cache_dir={tmp_path / 'cache'}", "data.sources[0].limit=300",
        "training.max_steps=2", "training.eval_steps=2", "training.save_strategy=no", "evaluation.max_new_tokens=4",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    saved = (tmp_path / "out" / "recipe.yaml").read_text()
    assert "max_steps: 2" in saved and "model_type: llama" in saved
