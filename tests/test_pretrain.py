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
    import copy

    from tests.conftest import TINY_RECIPE

    folder = tmp_path_factory.mktemp("run")
    recipe = copy.deepcopy(TINY_RECIPE)
    recipe["training"].update(output_dir=str(folder / "out"))
    recipe["hub"] = {"token": "hf_NEVERWRITTEN123"}
    recipe["data"]["cache_dir"] = str(folder / "cache")
    path = write_recipe(folder, recipe)
    result = run_pretrain("--config", str(path), "evaluation.max_new_tokens=8")
    assert result.returncode == 0, result.stderr[-3000:]
    return folder, path, result


@pytest.mark.slow
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


@pytest.mark.slow
def test_the_saved_model_rescored_by_evaluate_gives_the_runs_perplexity(finished_run, tmp_path):
    folder, _, _ = finished_run
    result = run([sys.executable, str(ROOT / "recipes" / "evaluate.py"), "--run", str(folder / "out"),
                  "--output_dir", str(tmp_path / "rescored")])
    assert result.returncode == 0, result.stderr[-3000:]
    own = json.loads((folder / "out" / "eval_results.json").read_text())
    rescored = json.loads((tmp_path / "rescored" / "eval_results.json").read_text())
    assert rescored["eval_perplexity"] == pytest.approx(own["eval_perplexity"], rel=1e-6)
    assert rescored["eval_tokens"] == own["eval_tokens"]


def test_no_secret_reaches_the_output_directory(finished_run):
    folder, _, result = finished_run
    files = [p for p in (folder / "out").rglob("*") if p.is_file()]
    assert any(p.name == "training_args.bin" for p in files)  # pickled arguments are searched too
    for path in files:
        assert b"hf_NEVERWRITTEN123" not in path.read_bytes(), path
    assert "hf_NEVERWRITTEN123" not in result.stdout + result.stderr


@pytest.mark.slow
def test_rerun_of_a_finished_run_changes_nothing(finished_run):
    folder, path, _ = finished_run
    out = folder / "out"
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = run_pretrain("--config", str(path), "evaluation.max_new_tokens=8")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already holds the finished run" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.slow
def test_same_data_in_a_new_run_comes_from_the_cache(finished_run, tmp_path):
    folder, path, _ = finished_run
    again = run_pretrain("--config", str(path), f"training.output_dir={tmp_path / 'second'}", "training.max_steps=1",
                         "training.save_strategy=no", "evaluation.max_new_tokens=2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "loaded from cache" in again.stdout
    assert "tokenizing" not in again.stderr + again.stdout  # no second tokenization
    assert json.loads((tmp_path / "second" / "data_stats.json").read_text())["from_cache"] is True


@pytest.mark.slow
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


@pytest.mark.slow
def test_early_stopping_on_evaluation_loss(tiny, tmp_path):
    tiny["training"].update(max_steps=20, eval_steps=2, save_steps=2)
    # No improvement can beat a threshold of 100 nats, so the run stops after `patience` evaluations.
    tiny["evaluation"].update(early_stopping_patience=2, early_stopping_threshold=100.0)
    result = run_pretrain("--config", str(write_recipe(tmp_path, tiny)))
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 6


@pytest.mark.slow
def test_two_processes_match_one_process_at_the_same_global_batch(tiny, tmp_path):
    """DDP over gloo on CPU: same per-step losses and final weights as one process (1e-4 relative)."""
    tiny["training"].update(max_steps=6, save_strategy="no", eval_steps=6, per_device_train_batch_size=8)
    path = write_recipe(tmp_path, tiny)
    configs = ROOT / "accelerate_configs"
    # Two processes first, on a fresh data cache: the first process prepares it, the other waits.
    two = run([shutil.which("toolkit") or "toolkit", "launch", str(configs / "cpu_2proc.yaml"), str(PRETRAIN),
               "--config", str(path), f"training.output_dir={tmp_path / 'two'}", "training.per_device_train_batch_size=4"])
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("run finished") == 1  # the summary comes from the main process only
    one = run(["accelerate", "launch", "-q", "--config_file", str(configs / "cpu.yaml"),
               str(PRETRAIN), "--config", str(path), f"training.output_dir={tmp_path / 'one'}"])
    assert one.returncode == 0, one.stderr[-3000:]
    assert "loaded from cache" in one.stdout

    def losses(out):
        history = json.loads((out / "trainer_state.json").read_text())["log_history"]
        return [h["loss"] for h in history if "loss" in h]

    assert json.loads((tmp_path / "two" / "run_info.json").read_text())["world_size"] == 2
    assert len(losses(tmp_path / "one")) == 6
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-4)
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    for name in a:
        assert torch.allclose(b[name], a[name], rtol=1e-4, atol=1e-4 * a[name].abs().max().item()), name
    for key in ("init_eval_loss", "eval_loss", "eval_tokens"):  # each held-out token counted once
        assert json.loads((tmp_path / "two" / "eval_results.json").read_text())[key] == pytest.approx(
            json.loads((tmp_path / "one" / "eval_results.json").read_text())[key], rel=1e-4)


@pytest.mark.slow
def test_default_recipe_runs_with_overrides_only(tmp_path):
    result = run_pretrain(
        f"training.output_dir={tmp_path / 'out'}", f"data.cache_dir={tmp_path / 'cache'}", "data.sources[0].limit=300",
        "training.max_steps=2", "training.eval_steps=2", "training.save_strategy=no", "evaluation.max_new_tokens=4",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    saved = (tmp_path / "out" / "recipe.yaml").read_text()
    assert "max_steps: 2" in saved and "model_type: llama" in saved
