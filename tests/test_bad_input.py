"""Bad input: one line naming the problem, a non-zero exit, no traceback, nothing written."""

import json

from tests.conftest import PRETRAIN, run, run_pretrain, write_recipe
from toolkit.recipe import load_recipe


def assert_refused(result, *fragments):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in last, last


def untouched(tiny):
    """Neither the output directory nor the data cache exists: no work was done, nothing written."""
    from pathlib import Path

    return not Path(tiny["training"]["output_dir"]).exists()


def test_recipe_file_missing(tiny, tmp_path):
    """In a real process, as a user meets it; the other refusals run `main` in this one."""
    result = run_pretrain("--config", str(tmp_path / "missing.yaml"))
    assert_refused(result, "recipe file not found", "missing.yaml")


def test_yaml_syntax_error_names_the_line(tiny, tmp_path, recipe_here):
    path = tmp_path / "broken.yaml"
    path.write_text("model:\n  model_type: llama\ntraining:\n  max_steps: [4\n")
    assert_refused(recipe_here(PRETRAIN, "--config", str(path)), "broken.yaml, line", "YAML syntax error")


def test_unknown_key(tiny, tmp_path, recipe_here):
    tiny["data"]["blok_size"] = 64
    result = recipe_here(PRETRAIN, "--config", str(write_recipe(tmp_path, tiny)))
    assert_refused(result, "recipe.yaml, line", "unknown key 'data.blok_size'", "did you mean 'data.block_size'?")
    assert untouched(tiny) and not (tmp_path / "cache").exists()


def test_wrong_type(tiny, tmp_path, recipe_here):
    result = recipe_here(PRETRAIN, "--config", str(write_recipe(tmp_path, tiny)), "training.max_steps=many")
    assert_refused(result, "the command line", "'training.max_steps' must be an integer, got 'many'")
    assert untouched(tiny) and not (tmp_path / "cache").exists()


def test_data_file_missing(tiny, tmp_path, recipe_here):
    tiny["data"]["sources"] = [{"files": str(tmp_path / "corpus" / "*.jsonl")}]
    result = recipe_here(PRETRAIN, "--config", str(write_recipe(tmp_path, tiny)))
    assert_refused(result, "data file not found", "corpus/*.jsonl")
    assert untouched(tiny) and not (tmp_path / "cache").exists()


def test_text_column_missing(tiny, tmp_path, recipe_here):
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"body": f"document number {i}"}) for i in range(5)))
    tiny["data"]["sources"] = [{"files": str(tmp_path / "d.jsonl"), "text_column": "content"}]
    result = recipe_here(PRETRAIN, "--config", str(write_recipe(tmp_path, tiny)))
    assert_refused(result, "text column 'content' not in", "its columns are body")
    assert untouched(tiny) and not (tmp_path / "cache").exists()


def test_dataset_empty_after_cleaning(tiny, tmp_path, recipe_here):
    tiny["data"]["cleaning"] = {"min_chars": 10_000_000}
    result = recipe_here(PRETRAIN, "--config", str(write_recipe(tmp_path, tiny)))
    assert_refused(result, "dataset empty after cleaning", "data.cleaning")
    assert untouched(tiny) and not (tmp_path / "cache").exists()


def test_block_size_larger_than_the_model_positions(tiny, tmp_path, recipe_here):
    tiny["data"]["block_size"] = 512  # the tiny model has 128 positions
    result = recipe_here(PRETRAIN, "--config", str(write_recipe(tmp_path, tiny)))
    assert_refused(result, "data.block_size=512 is larger than the model's maximum positions (128)")
    assert untouched(tiny) and not (tmp_path / "cache").exists()


def test_output_directory_of_another_recipe_is_refused_and_left_as_it_was(tiny, tmp_path, recipe_here):
    out = tmp_path / "out"
    out.mkdir()
    other = write_recipe(tmp_path, {**tiny, "training": {**tiny["training"], "learning_rate": 0.5}}, "other.yaml")
    (out / "recipe.yaml").write_text(load_recipe(other).to_yaml())
    (out / "notes.txt").write_text("the user's own file")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    result = recipe_here(PRETRAIN, "--config", str(write_recipe(tmp_path, tiny)))
    assert_refused(result, "holds a run of another recipe", "training.learning_rate: 0.5 -> 0.003")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not (tmp_path / "cache").exists()


def test_non_empty_folder_that_is_no_run_is_refused(tiny, tmp_path, recipe_here):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.tex").write_text("precious")
    result = recipe_here(PRETRAIN, "--config", str(write_recipe(tmp_path, tiny)))
    assert_refused(result, "not empty and holds no toolkit run")
    assert (tmp_path / "out" / "thesis.tex").read_text() == "precious"


def test_accelerate_launch_passes_the_message_and_the_failure_on(tiny, tmp_path):
    result = run(["accelerate", "launch", "-q", "--num_processes", "1", "--cpu", str(PRETRAIN), "--config", str(tmp_path / "nope.yaml")])
    assert result.returncode != 0
    assert "error: recipe file not found" in result.stderr
    assert "Traceback" not in result.stderr
