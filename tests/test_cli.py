"""The `toolkit` console command: validate, plan, generate, report, push, and their bad input."""

import copy
import json
import shutil

import pytest
import yaml

from tests.conftest import ROOT, TINY_RECIPE, run, write_recipe
from tests.test_bad_input import assert_refused

TOOLKIT = shutil.which("toolkit")
pytestmark = pytest.mark.skipif(TOOLKIT is None, reason="the package is not installed (pip install -e .)")


def toolkit(*args, **kwargs):
    return run([TOOLKIT, *args], **kwargs)


@pytest.fixture
def recipe_file(tmp_path):
    recipe = copy.deepcopy(TINY_RECIPE)
    recipe["training"]["output_dir"] = str(tmp_path / "out")
    recipe["data"]["cache_dir"] = str(tmp_path / "cache")
    return write_recipe(tmp_path, recipe)


@pytest.mark.slow
def test_validate_accepts_a_good_recipe_and_does_no_work(recipe_file, tmp_path):
    result = toolkit("validate", str(recipe_file))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"ok: {recipe_file} is valid")
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("change, message", [
    ({"data": {"blok_size": 64}}, "unknown key 'data.blok_size'; did you mean 'data.block_size'?"),
    ({"training": {"max_steps": "many"}}, "'training.max_steps' must be an integer"),
    ({"data": {"sources": [{"files": "nowhere/*.jsonl"}]}}, "data file not found"),
    ({"data": {"block_size": 512}}, "larger than the model's maximum positions (128)"),
    ({"data": {"sources": [{"files": "COLUMNS", "text_column": "content"}]}}, "text column 'content' not in"),
])
def test_validate_rejects_the_bad_recipes_of_the_pretraining_tests(tmp_path, change, message, toolkit_here):
    recipe = copy.deepcopy(TINY_RECIPE)
    recipe["training"]["output_dir"] = str(tmp_path / "out")
    (tmp_path / "d.jsonl").write_text(json.dumps({"body": "some text"}) + "\n")
    for section, values in change.items():
        values = json.loads(json.dumps(values).replace("COLUMNS", str(tmp_path / "d.jsonl")))
        recipe[section] = {**recipe.get(section, {}), **values}
    assert_refused(toolkit_here("validate", str(write_recipe(tmp_path, recipe))), message)


def test_validate_with_data_catches_a_dataset_cleaned_away(tmp_path, toolkit_here):
    recipe = copy.deepcopy(TINY_RECIPE)
    recipe["training"]["output_dir"] = str(tmp_path / "out")
    recipe["data"]["cache_dir"] = str(tmp_path / "cache")
    good = toolkit_here("validate", str(write_recipe(tmp_path, recipe)), "--data")
    assert good.returncode == 0 and "held-out examples after cleaning" in good.stdout
    recipe["data"]["cleaning"] = {"min_chars": 10_000_000}
    assert_refused(toolkit_here("validate", str(write_recipe(tmp_path, recipe)), "--data"), "dataset empty after cleaning")
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_validate_rejects_missing_file_syntax_error_and_a_foreign_output_dir(recipe_file, tmp_path, toolkit_here):
    assert_refused(toolkit_here("validate", str(tmp_path / "none.yaml")), "recipe file not found")
    broken = tmp_path / "broken.yaml"
    broken.write_text("data:\n  block_size: [1\n")
    assert_refused(toolkit_here("validate", str(broken)), "YAML syntax error")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "recipe.yaml").write_text(yaml.safe_dump({"training": {"learning_rate": 9.0}}))
    assert_refused(toolkit_here("validate", str(recipe_file)), "holds a run of another recipe")


def test_plan_names_known_gpus_when_one_is_unknown(recipe_file, toolkit_here):
    assert_refused(toolkit_here("plan", str(recipe_file), "--gpu", "Z9000"), "unknown GPU 'Z9000'; known: H200")


def test_plan_prints_the_budget(recipe_file, toolkit_here):
    result = toolkit_here("plan", str(recipe_file), "--gpu", "h200")
    assert result.returncode == 0, result.stderr
    assert "FLOPs" in result.stdout and "parameters" in result.stdout.lower()
    # Overrides after the options count too (argparse alone would stop the list at --gpu).
    small = toolkit_here("plan", str(recipe_file), "--gpu", "h200", "data.block_size=32")
    assert small.returncode == 0 and "32 (data.block_size)" in small.stdout, small.stderr
    bogus = toolkit_here("plan", str(recipe_file), "--gpu", "h200", "--bogus")
    assert bogus.returncode == 2 and "unrecognized arguments: --bogus" in bogus.stderr


@pytest.mark.slow
def test_report_generate_and_push_on_a_finished_run(recipe_file, tmp_path, toolkit_here):
    from tests.conftest import run_pretrain

    assert run_pretrain("--config", str(recipe_file)).returncode == 0
    out = tmp_path / "out"
    (out / "README.md").unlink()
    (out / "training_curves.png").unlink()
    report = toolkit_here("report", str(out))
    assert report.returncode == 0, report.stderr
    assert (out / "README.md").is_file() and (out / "training_curves.png").is_file()

    sample = toolkit_here("generate", str(out), "--prompt", "The import", "--max-new-tokens", "5", "--temperature", "0")
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.startswith("The import")

    assert_refused(toolkit_here("push", str(out)), "no Hub model id")
    assert_refused(toolkit_here("push", str(out), "--repo-id", "no-namespace"), "is not 'namespace/name'")
    offline = toolkit("push", str(out), "--repo-id", "someone/model")  # the Hub is unreachable here
    assert_refused(offline, "push to someone/model failed")


def test_commands_refuse_a_folder_that_is_no_run(tmp_path, toolkit_here):
    assert_refused(toolkit_here("report", str(tmp_path)), "is no finished toolkit run")
    assert_refused(toolkit_here("push", str(tmp_path), "--repo-id", "a/b"), "is no finished toolkit run")
    assert_refused(toolkit_here("generate", str(tmp_path), "--prompt", "x"), "holds no model")


@pytest.mark.parametrize("config, fragment", [
    ("missing.yaml", "accelerate config file not found"),
    ("bogus.yaml", "unknown distributed_type 'MULTI_GPUS'; did you mean MULTI_GPU?"),
    ("broken.yaml", "broken.yaml, line 3: YAML syntax error"),
])
def test_launch_refuses_a_bad_accelerate_config(tmp_path, config, fragment, toolkit_here):
    (tmp_path / "bogus.yaml").write_text("distributed_type: MULTI_GPUS\nnum_processes: 2\n")
    (tmp_path / "broken.yaml").write_text("distributed_type: NO\nnum_processes: [2\n")
    assert_refused(toolkit_here("launch", str(tmp_path / config), str(ROOT / "recipes" / "pretrain.py")), fragment)


@pytest.mark.slow
def test_launch_with_deepspeed_config_says_how_to_install_it():
    pytest.importorskip("accelerate")
    import importlib.util

    from toolkit.errors import ToolkitError
    from toolkit.launch import check_launch_config

    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed here")
    # On a machine without GPUs `toolkit launch` refuses DeepSpeed for that first (tests/test_distributed.py);
    # the config as any machine would read it still says what to install.
    with pytest.raises(ToolkitError, match="DeepSpeed, which is not installed.*pip install deepspeed"):
        check_launch_config(ROOT / "accelerate_configs" / "deepspeed_zero3.yaml")
