"""Model card, plots and push: what a stranger sees of a run, and that no secret goes with it."""

import copy
import json
import logging
import shutil

import pytest
from huggingface_hub import HfApi, ModelCard
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import ROOT, TINY_RECIPE, run_pretrain, write_recipe
from toolkit.publish import PLOT_FILE, files_to_push, push_run
from toolkit.recipe import load_recipe

SECRET = "hf_PUSHTOKEN_SHOULD_NEVER_BE_WRITTEN"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("card")
    recipe = copy.deepcopy(TINY_RECIPE)
    recipe["training"].update(output_dir=str(folder / "out"))
    recipe["data"]["cache_dir"] = str(folder / "cache")
    recipe["hub"] = {"model_id": "someone/tiny-docs-llama", "token": SECRET}
    result = run_pretrain("--config", str(write_recipe(folder, recipe)), env={"HF_TOKEN": SECRET})
    assert result.returncode == 0, result.stderr[-3000:]
    assert SECRET not in result.stdout + result.stderr
    return folder / "out"


@pytest.mark.slow
def test_model_card_parses_and_its_model_index_holds_the_runs_numbers(run_dir):
    card = ModelCard.load(run_dir / "README.md")
    results = json.loads((run_dir / "eval_results.json").read_text())
    data = card.data
    assert data.pipeline_tag == "text-generation" and data.license == "apache-2.0" and data.language == ["en"]
    assert "toolkit" in data.tags
    (perplexity,) = data.eval_results
    assert perplexity.metric_type == "perplexity"
    assert perplexity.metric_value == pytest.approx(results["eval_perplexity"], abs=1e-4)
    meta = data.to_dict()
    assert meta["model-index"][0]["name"] == "tiny-docs-llama"
    text = card.text
    for heading in ("## Evaluation", "## Data", "## Training", "## Intended uses and limitations"):
        assert heading in text
    assert f"{results['init_eval_perplexity']:.2f}" in text and f"{results['eval_perplexity']:.2f}" in text
    assert "bias" in text and f"![Training curves]({PLOT_FILE})" in text
    assert "model_type: llama" in text  # the resolved recipe
    assert "deduplicate" in text  # cleaning statistics
    everything = json.loads((run_dir / "all_results.json").read_text())
    assert everything["train_tokens_per_second"] > 0 and everything["train_model_flops_per_second"] > 0
    assert f"{everything['train_tokens_per_second']:,.0f} tokens/s" in text and "model FLOP/s achieved" in text


def test_training_curves_are_a_png(run_dir):
    png = (run_dir / PLOT_FILE).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


class Recorder:
    """Stands in for the Hub's two network calls (create the repo, upload); the Hub is unreachable here."""

    def __init__(self):
        self.calls = []

    def create_repo(self, api, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs, api.token))

    def upload_folder(self, api, repo_id, folder_path, allow_patterns, **kwargs):
        self.calls.append(("upload_folder", repo_id, folder_path, list(allow_patterns), api.token))


@pytest.fixture
def hub(monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: recorder.create_repo(self, repo_id, **kw))
    monkeypatch.setattr(HfApi, "upload_folder",
                        lambda self, repo_id, folder_path, allow_patterns, **kw:
                        recorder.upload_folder(self, repo_id, folder_path, allow_patterns, **kw))
    return recorder


def test_push_uploads_exactly_the_model_card_and_record_and_no_token(run_dir, hub, tmp_path):
    recipe = load_recipe(run_dir / "recipe.yaml", [f"hub.token={SECRET}", "hub.push=true"])
    assert push_run(recipe) == "https://huggingface.co/someone/tiny-docs-llama"
    (create, repo, kwargs, token), upload = hub.calls[0], hub.calls[1]
    assert create == "create_repo" and repo == "someone/tiny-docs-llama" and kwargs["private"] is True
    assert token == SECRET  # the token reaches the client, and only the client
    _, repo, folder, files, _ = upload
    assert folder == str(run_dir) and files == files_to_push(run_dir)
    for needed in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "README.md",
                   "recipe.yaml", "eval_results.json", PLOT_FILE):
        assert needed in files
    assert not any(f.startswith(("checkpoint-", "runs/")) or f.endswith(".bin") for f in files)
    # What would be uploaded is a loadable model on its own.
    uploaded = tmp_path / "uploaded"
    for rel in files:
        (uploaded / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(run_dir / rel, uploaded / rel)
    AutoModelForCausalLM.from_pretrained(uploaded)
    AutoTokenizer.from_pretrained(uploaded)
    # No uploaded file, and no file the run wrote anywhere, holds the token.
    for path in list(uploaded.rglob("*")) + list(run_dir.rglob("*")):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_failed_push_says_how_to_push_later(tmp_path, monkeypatch, caplog):
    # Without the network the real client fails: nothing is replaced here.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", "hf_DONOTPRINT999")
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    recipe = load_recipe(None, [f"training.output_dir={tmp_path}", "hub.push=true", "hub.model_id=someone/tiny"],
                         default=ROOT / "recipes" / "pretrain" / "default.yaml")
    with caplog.at_level(logging.ERROR, logger="toolkit"):
        outcome = push_run(recipe)
    assert outcome.startswith("push failed (model saved locally)")
    assert f"toolkit push {tmp_path} --repo-id someone/tiny" in outcome
    assert "hf_DONOTPRINT999" not in caplog.text + outcome
    assert (tmp_path / "model.safetensors").read_bytes() == b"weights"


@pytest.mark.slow
def test_push_every_save_uploads_each_checkpoint(tiny, tmp_path, hub):
    tiny["hub"] = {"push": True, "model_id": "someone/every", "strategy": "every_save"}
    tiny["evaluation"] = {"before_training": False, "sample_prompts": ["The"], "max_new_tokens": 2}
    path = write_recipe(tmp_path, tiny)
    import runpy

    # In this process, so that the network calls can be replaced; the recipe's own main().
    main = runpy.run_path(str(ROOT / "recipes" / "pretrain.py"), run_name="recipe")["main"]
    main(["--config", str(path)])
    uploads = [c for c in hub.calls if c[0] == "upload_folder"]
    folders = [c[2] for c in uploads]
    assert folders[:2] == [str(tmp_path / "out" / "checkpoint-2"), str(tmp_path / "out" / "checkpoint-4")]
    assert folders[-1] == str(tmp_path / "out")  # and the finished run at the end
    assert all("optimizer.pt" not in c[3] and "model.safetensors" in c[3] for c in uploads)
