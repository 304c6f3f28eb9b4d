"""Recipes: loading, overrides, validation messages, and the saved copy."""

import pytest
import yaml

from tests.conftest import ROOT, write_recipe
from toolkit.errors import ToolkitError
from toolkit.recipe import load_recipe, parse_command_line

DEFAULT = ROOT / "recipes" / "pretrain" / "default.yaml"


def test_default_recipe_loads_and_validates():
    recipe = load_recipe(None, default=DEFAULT)
    assert recipe.model.model_type == "llama"
    assert recipe.data.sources[0].builtin == "python-docs"
    assert recipe.training["max_steps"] > 0


def test_command_line_is_config_then_overrides():
    assert parse_command_line(["--config", "a.yaml", "training.max_steps=3"]) == ("a.yaml", ["training.max_steps=3"])
    assert parse_command_line(["data.block_size=64"]) == (None, ["data.block_size=64"])
    with pytest.raises(ToolkitError, match="has no '='"):
        parse_command_line(["training.max_steps"])


def test_overrides_reach_nested_keys_and_list_items(tmp_path):
    recipe = load_recipe(
        None,
        ["training.learning_rate=1e-3", "data.cleaning.min_chars=7", "data.sources[0].weight=2", "model.config.hidden_size=64"],
        default=DEFAULT,
    )
    assert recipe.training["learning_rate"] == pytest.approx(1e-3)  # YAML reads 1e-3 as text; the type says float
    assert recipe.data.cleaning.min_chars == 7
    assert recipe.data.sources[0].weight == 2.0
    assert recipe.model.config["hidden_size"] == 64


def test_training_accepts_any_training_arguments_field():
    recipe = load_recipe(
        None,
        ["training.label_smoothing_factor=0.1", "training.optim=adafactor", "training.gradient_accumulation_steps=2",
         "training.lr_scheduler_type=cosine_with_min_lr", "training.lr_scheduler_kwargs={min_lr: 1.0e-5}"],
        default=DEFAULT,
    )
    assert recipe.training["optim"] == "adafactor"
    assert recipe.training["lr_scheduler_kwargs"] == {"min_lr": 1e-5}


def test_unknown_key_names_the_key_its_file_line_and_closest_key(tmp_path):
    path = write_recipe(tmp_path, {"data": {"block_size": 64, "clening": {"min_chars": 3}}})
    with pytest.raises(ToolkitError) as err:
        load_recipe(path)
    assert str(err.value) == f"{path}, line 3: unknown key 'data.clening'; did you mean 'data.cleaning'?"


def test_unknown_training_key_suggests_the_training_arguments_field():
    with pytest.raises(ToolkitError,
                       match=r"the command line: unknown key 'training.learning_rat'; did you mean 'training.learning_rate'\?"):
        load_recipe(None, ["training.learning_rat=0.1"], default=DEFAULT)


def test_unknown_key_inside_a_source_is_located(tmp_path):
    path = write_recipe(tmp_path, {"data": {"sources": [{"builtin": "python-docs"}, {"fils": "x.txt"}]}})
    with pytest.raises(ToolkitError, match=r"line 4: unknown key 'data.sources\[1\].fils'; did you mean 'data.sources\[1\].files'"):
        load_recipe(path)


@pytest.mark.parametrize(
    "override, message",
    [
        ("training.learning_rate=fast", "'training.learning_rate' must be a number, got 'fast'"),
        ("data.block_size=1.5", "'data.block_size' must be an integer, got 1.5"),
        ("evaluation.before_training=maybe", "'evaluation.before_training' must be true or false"),
        ("training.eval_strategy=step", "must be one of 'no', 'steps', 'epoch', got 'step' (str); did you mean 'steps'?"),
        ("training.optim=adamw", "did you mean 'adamw_torch'?"),
        ("data.sources=x", "'data.sources' must be a list of"),
    ],
)
def test_wrong_type_names_the_expected_type(override, message):
    with pytest.raises(ToolkitError) as err:
        load_recipe(None, [override], default=DEFAULT)
    assert message in str(err.value)


def test_yaml_syntax_error_gives_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  model_type: llama\ndata:\n  block_size: [64\n")
    with pytest.raises(ToolkitError, match=r"bad.yaml, line \d+: YAML syntax error"):
        load_recipe(path)


def test_missing_recipe_file():
    with pytest.raises(ToolkitError, match="recipe file not found: nope.yaml"):
        load_recipe("nope.yaml")


def test_cross_key_rules_are_checked_up_front():
    with pytest.raises(ToolkitError, match="needs exactly one of builtin, hub, files"):
        load_recipe(None, ["data.sources=[{builtin: python-docs, hub: wikitext}]"], default=DEFAULT)
    with pytest.raises(ToolkitError, match="early stopping needs evaluations"):
        load_recipe(None, ["evaluation.early_stopping_patience=2", "training.eval_strategy=no"], default=DEFAULT)
    with pytest.raises(ToolkitError, match="hub.model_id must be 'namespace/name'"):
        load_recipe(None, ["hub.model_id=justaname"], default=DEFAULT)
    with pytest.raises(ToolkitError, match="training: "):  # TrainingArguments' own check, as one line
        load_recipe(None, ["training.load_best_model_at_end=true", "training.eval_strategy=steps",
                           "training.save_strategy=epoch"], default=DEFAULT)


def test_saved_recipe_is_resolved_and_holds_no_secrets():
    recipe = load_recipe(None, ["hub.token=hf_other456", "training.max_steps=7"], default=DEFAULT)
    text = recipe.to_yaml()
    assert "hf_other456" not in text
    saved = yaml.safe_load(text)
    assert saved["training"]["max_steps"] == 7
    assert "token" not in saved["hub"]
    assert recipe.to_dict(secrets=True)["hub"]["token"] == "hf_other456"


@pytest.mark.parametrize("key,value,instead", [("push_to_hub", "true", "hub.push"), ("hub_model_id", "me/x", "hub.model_id"),
                                               ("hub_token", "hf_secret123", "hub.token"), ("hub_private_repo", "false", "hub.private"),
                                               ("hub_strategy", "every_save", "hub.strategy")])
def test_the_trainers_own_hub_keys_are_refused_with_a_pointer_to_the_hub_section(key, value, instead):
    # With them the Trainer would push by itself, public by default, past the toolkit's allowlist.
    with pytest.raises(ToolkitError) as err:
        load_recipe(None, [f"training.{key}={value}"], default=DEFAULT)
    assert f"training.{key} is not used" in str(err.value) and instead in str(err.value)
    assert value not in str(err.value)  # a token is never echoed


def test_output_dir_is_resolved_once_in_the_recipe(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RUNS", str(tmp_path / "runs"))
    assert load_recipe(None, ["training.output_dir=~/runs/x"], default=DEFAULT).output_dir == tmp_path / "runs" / "x"
    assert load_recipe(None, ["training.output_dir=$RUNS/y"], default=DEFAULT).training["output_dir"] == str(tmp_path / "runs" / "y")
    monkeypatch.delenv("RUNS")
    with pytest.raises(ToolkitError, match=r"uses \$RUNS, which is not set"):
        load_recipe(None, ["training.output_dir=$RUNS/y"], default=DEFAULT)
    with pytest.raises(ToolkitError, match="training.output_dir is empty"):
        load_recipe(None, ["training.output_dir="], default=DEFAULT)


@pytest.mark.parametrize("override", ["training.prediction_loss_only=true", "training.batch_eval_metrics=true",
                                      "training.eval_do_concat_batches=false", "training.dataloader_drop_last=true"])
def test_settings_that_would_break_token_weighted_perplexity_are_refused(override):
    with pytest.raises(ToolkitError, match="perplexity needs every evaluation token"):
        load_recipe(None, [override], default=DEFAULT)


@pytest.mark.parametrize("override", ["data.sources.weight=2", "data.sources[-1].weight=2"])
def test_list_keys_need_an_index(override):
    with pytest.raises(ToolkitError, match=r"'data.sources' is a list; address an item by index"):
        load_recipe(None, [override], default=DEFAULT)


def test_a_rejected_secret_is_not_echoed():
    with pytest.raises(ToolkitError) as err:
        load_recipe(None, ["hub.token=12345678"], default=DEFAULT)
    assert "12345678" not in str(err.value) and "'hub.token' must be" in str(err.value)
