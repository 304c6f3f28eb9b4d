"""Nothing the user had is lost, nothing leaks, no wait lasts forever: each finding came from a real run.

One tiny run into `~/runs/mine` (HOME pointed into the test's folder) is shared by the tests
that need a finished run; each copies it before changing anything.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import PRETRAIN, ROOT, TINY_RECIPE, free_port, run, write_recipe
from toolkit.data.packing import pack_examples
from toolkit.data.prepare import PreparedData, _store
from toolkit.errors import ToolkitError
from toolkit.loss import IGNORE
from toolkit.publish import files_to_push
from toolkit.recipe import load_recipe
from toolkit.run import check_recipe
from toolkit.tasks import TASKS
from toolkit.tasks.causal_lm.trainer import build_trainer

FINETUNE_DEFAULT = ROOT / "recipes" / "finetune" / "default.yaml"


def tiny_recipe(tmp, **training) -> dict:
    import copy

    recipe = copy.deepcopy(TINY_RECIPE)
    recipe["data"]["cache_dir"] = str(tmp / "cache")
    recipe["training"].update(training)
    return recipe


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A HOME with another tool's run in ~/runs/theirs, and this toolkit's finished run in ~/runs/mine."""
    root = tmp_path_factory.mktemp("home")
    home, cwd = root / "home", root / "cwd"
    theirs = home / "runs" / "theirs"
    (theirs / "checkpoint-2").mkdir(parents=True)
    (theirs / "checkpoint-2" / "model.safetensors").write_bytes(b"their weights")
    (theirs / "notes.txt").write_text("their run")
    cwd.mkdir()
    recipe = write_recipe(root, tiny_recipe(root, output_dir="~/runs/mine"))
    result = run([sys.executable, str(PRETRAIN), "--config", str(recipe)], cwd=cwd, env={"HOME": str(home)})
    assert result.returncode == 0, result.stderr[-3000:]
    return root, home, cwd, recipe, result


def foreign_files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------- 1. one resolved output folder


@pytest.mark.slow
def test_a_tilde_output_dir_is_one_folder_for_every_writer_and_another_run_survives(home, recipe_here, monkeypatch):
    root, home_dir, cwd, recipe, result = home
    mine = home_dir / "runs" / "mine"
    assert not (cwd / "~").exists()  # nothing under a literal '~' folder
    for name in ("model.safetensors", "recipe.yaml", "eval_results.json", "README.md", "all_results.json"):
        assert (mine / name).is_file(), name
    assert str(mine) in result.stdout  # the summary names the folder that holds the model
    AutoModelForCausalLM.from_pretrained(mine)  # the model is where the summary says

    theirs = home_dir / "runs" / "theirs"
    before = foreign_files(theirs)
    monkeypatch.setenv("HOME", str(home_dir))
    monkeypatch.chdir(cwd)
    into_theirs = recipe_here(PRETRAIN, "--config", str(recipe), "training.output_dir=~/runs/theirs")
    assert into_theirs.returncode == 2 and "holds no toolkit run" in into_theirs.stderr, into_theirs.stderr
    assert "Traceback" not in into_theirs.stderr
    assert foreign_files(theirs) == before  # their checkpoint and model untouched
    assert not (cwd / "~").exists()


def unwritable_folder(tmp_path):
    """A folder this user cannot write to: a read-only one, or (for root, who may write anywhere
    else) the kernel's /sys."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if not os.access(locked, os.W_OK):
        return locked
    return Path("/sys")


def test_an_output_folder_that_cannot_be_written_is_refused_by_validate_and_the_run(tmp_path, toolkit_here, recipe_here):
    locked = unwritable_folder(tmp_path)
    recipe = write_recipe(tmp_path, tiny_recipe(tmp_path, output_dir=str(locked / "run")))
    checked = toolkit_here("validate", str(recipe))
    assert checked.returncode == 2 and "is not writable" in checked.stderr, checked.stderr
    ran = recipe_here(PRETRAIN, "--config", str(recipe))
    assert ran.returncode == 2 and "is not writable" in ran.stderr and "Traceback" not in ran.stderr, ran.stderr
    assert not (locked / "run").exists()


# ----------------------------------------------------------------- 2. no other command overwrites a run


def test_evaluate_refuses_a_run_folder_as_its_output(home, tmp_path, recipe_here):
    _, home_dir, _, _, _ = home
    mine = home_dir / "runs" / "mine"
    results = (mine / "eval_results.json").read_bytes()
    (tmp_path / "p.txt").write_text("a cat\n")
    (tmp_path / "r.txt").write_text("a cat\n")
    evaluate = ROOT / "recipes" / "evaluate.py"
    scored = recipe_here(evaluate, "--predictions", str(tmp_path / "p.txt"), "--references", str(tmp_path / "r.txt"),
                         "--metrics", "bleu", "--output_dir", str(mine))
    assert scored.returncode == 2 and "holds a run or a saved model" in scored.stderr, scored.stderr
    assert (mine / "eval_results.json").read_bytes() == results
    # Its own folder, once scored, may be scored again.
    for _ in range(2):
        again = recipe_here(evaluate, "--predictions", str(tmp_path / "p.txt"), "--references", str(tmp_path / "r.txt"),
                            "--metrics", "chrf", "--output_dir", str(tmp_path / "scores"))
        assert again.returncode == 0, again.stderr


# ----------------------------------------------------------------- 3. atomic results, "finished" last


@pytest.mark.slow
def test_a_full_disk_at_the_end_leaves_no_finished_looking_run_and_the_rerun_completes_it(tmp_path, toolkit_here, recipe_here):
    recipe = write_recipe(tmp_path, tiny_recipe(tmp_path, output_dir=str(tmp_path / "out")))
    out = tmp_path / "out"
    full = run([sys.executable, str(ROOT / "tests" / "full_disk_during.py"), "4096", str(PRETRAIN), "--config", str(recipe)])
    assert full.returncode == 1, full.stderr[-2000:]
    assert "error: the disk is full" in full.stderr and "Traceback" not in full.stderr, full.stderr[-2000:]
    assert not (out / "eval_results.json").exists()  # not finished-looking
    assert (out / "all_results.json").is_file() and (out / "model.safetensors").is_file()
    assert not [p for p in out.rglob("*.tmp")]  # no torn temporary file left
    steps = json.loads((out / "trainer_state.json").read_text())["global_step"]

    rerun = recipe_here(PRETRAIN, "--config", str(recipe))
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "run completed" in rerun.stdout
    for name in ("eval_results.json", "README.md", "training_curves.png"):
        assert (out / name).is_file(), name
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == steps  # nothing trained again
    results = json.loads((out / "eval_results.json").read_text())
    assert results["eval_perplexity"] == json.loads((out / "all_results.json").read_text())["eval_perplexity"]

    # A results file torn by an older toolkit: `toolkit report` says so in one line.
    (out / "all_results.json").write_bytes(b"")
    report = toolkit_here("report", str(out))
    assert report.returncode == 2 and "all_results.json is damaged" in report.stderr, report.stderr
    assert len(report.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------- 4. the push list


def test_the_push_list_holds_only_allowlisted_files_of_the_run_itself(home, tmp_path):
    _, home_dir, _, _, _ = home
    folder = tmp_path / "run"
    shutil.copytree(home_dir / "runs" / "mine", folder)
    outside = tmp_path / "token"
    outside.write_text("hf_TOKEN_OUTSIDE")
    (folder / "token.txt").symlink_to(outside)
    (folder / "tokenizer.json.link").symlink_to(folder / "tokenizer.json")
    for rel, text in {"merged/.git/config": "[remote]", "merged/.env": "HF_TOKEN=x", "merged/optimizer.pkl": "pickle",
                      "data/private_copy.json": "{}", "logs/train.txt": "log", ".env": "x", "merged/config.json": "{}",
                      "merged/model.safetensors": "w", "merged/sub/model.safetensors": "w"}.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    (folder / "merged" / "vocab.json").symlink_to(outside)
    files = files_to_push(folder)
    for needed in ("model.safetensors", "config.json", "tokenizer.json", "README.md", "recipe.yaml", "eval_results.json",
                   "merged/config.json", "merged/model.safetensors"):
        assert needed in files, needed
    for leaked in ("token.txt", "tokenizer.json.link", "merged/.git/config", "merged/.env", "merged/optimizer.pkl",
                   "data/private_copy.json", "logs/train.txt", ".env", "merged/vocab.json", "merged/sub/model.safetensors",
                   "data_stats.json", "samples.json", "training_args.bin"):
        assert leaked not in files, leaked
    assert not any(f.startswith(("checkpoint-", "runs/", ".")) or f.endswith((".bin", ".pt", ".pth")) for f in files)
    # Data text goes only when the recipe asks.
    assert {"data_stats.json", "samples.json"} <= set(files_to_push(folder, include_samples=True))
    # A symlinked folder is not followed either.
    shutil.rmtree(folder / "merged")
    (folder / "merged").symlink_to(tmp_path)
    assert not [f for f in files_to_push(folder) if f.startswith("merged/")]


# ----------------------------------------------------------------- 5. waits end, caches are shared safely



@pytest.mark.slow
def test_a_non_first_process_whose_first_process_is_stuck_ends_with_one_line(tmp_path):
    recipe = write_recipe(tmp_path, tiny_recipe(tmp_path, output_dir=str(tmp_path / "out")))
    started = time.time()
    # Two real processes; the first never stores the data it prepared (tests/first_process_stuck.py).
    waited = run([sys.executable, "-m", "toolkit.cli", "launch", str(ROOT / "accelerate_configs" / "cpu_2proc.yaml"),
                  "--main_process_port", str(free_port()), str(ROOT / "tests" / "first_process_stuck.py"), str(PRETRAIN),
                  "--config", str(recipe), "data.wait_timeout=5"], timeout=180)
    assert waited.returncode == 2, waited.stderr[-3000:]
    errors = [line for line in waited.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in waited.stderr, waited.stderr[-3000:]
    assert "waited 5 s for this machine's first process to prepare the data cache" in errors[0]
    assert "data.wait_timeout" in errors[0]
    assert time.time() - started < 150


def test_a_complete_cache_is_never_replaced_under_its_readers(tmp_path, tiny_base):
    tok = AutoTokenizer.from_pretrained(tiny_base)
    data = PreparedData(train=Dataset.from_dict({"input_ids": [[1, 2]]}), eval=Dataset.from_dict({"input_ids": [[3]]}),
                        tokenizer=tok, stats={"n": 1})
    path = tmp_path / "cache" / "key"
    assert _store(data, path) is True
    inode = (path / "stats.json").stat().st_ino
    assert _store(data, path) is False  # another run stored it first: its copy stays, ours is dropped
    assert (path / "stats.json").stat().st_ino == inode
    assert sorted(p.name for p in path.parent.iterdir()) == ["key"]  # no temporary folder left


@pytest.mark.slow
def test_two_runs_sharing_a_cache_folder_both_succeed_with_one_identical_cache(tmp_path):
    cache = tmp_path / "shared-cache"
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = []
    for name in ("a", "b"):
        recipe = tiny_recipe(tmp_path, output_dir=str(tmp_path / name), max_steps=1, eval_steps=1, save_steps=1)
        recipe["data"]["cache_dir"] = str(cache)
        recipe["evaluation"].update(before_training=False, max_new_tokens=1)
        path = write_recipe(tmp_path, recipe, f"{name}.yaml")
        # Both store at the same moment: each waits at the store for the other (tests/cache_race.py).
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "tests" / "cache_race.py"), str(barrier), str(PRETRAIN),
                                       "--config", str(path)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}))
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    caches = [json.loads((tmp_path / n / "data_stats.json").read_text())["cache"] for n in ("a", "b")]
    assert caches[0] == caches[1]
    kind = cache / "pretraining"
    assert [p.name for p in kind.iterdir()] == [os.path.basename(caches[0])]  # one cache, no temporary folder left
    ppl = [json.loads((tmp_path / n / "eval_results.json").read_text())["eval_perplexity"] for n in ("a", "b")]
    assert ppl[0] == ppl[1]  # the same data, the same run


# ----------------------------------------------------------------- 7. silent wrong results


def test_neftune_with_packed_rows_is_refused_in_one_line(tiny_base):
    for overrides in (["training.neftune_noise_alpha=5"], ["training.neftune_noise_alpha=5", "data.format=text"]):
        recipe = load_recipe(None, [f"model.name_or_path={tiny_base}", *overrides], default=FINETUNE_DEFAULT)
        with pytest.raises(ToolkitError, match="neftune_noise_alpha scales its noise by a row's length"):
            check_recipe(recipe, TASKS["causal_lm"])


def test_tokens_per_second_counts_every_trained_token_where_pad_equals_eos(tiny_base, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    tokenizer.pad_token = tokenizer.eos_token  # as SmolLM2's: pad = <|im_end|>
    eos = tokenizer.eos_token_id
    rows = [{"input_ids": list(range(5 + i, 20 + i)) + [eos], "labels": [IGNORE] * 3 + list(range(8 + i, 20 + i)) + [eos]}
            for i in range(6)]
    packed, _ = pack_examples(Dataset.from_list(rows), 64)
    recipe = load_recipe(None, [f"model.name_or_path={tiny_base}", f"training.output_dir={tmp_path}", "training.report_to=[]",
                                "training.max_steps=-1", "training.num_train_epochs=1", "training.save_strategy=no",
                                "training.per_device_train_batch_size=2", "training.eval_strategy=no"],
                         default=FINETUNE_DEFAULT)
    model = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)
    trainer = build_trainer(recipe, model, tokenizer, packed, packed)
    trainer.train()
    assert trainer.state.num_input_tokens_seen == sum(len(r["input_ids"]) for r in rows)  # the EOS tokens included


def test_a_push_that_failed_is_retried_by_the_rerun_and_done_once(home, tmp_path, recipe_here, monkeypatch):
    # The Hub cannot be reached from here: its two network calls are replaced (and recorded); all else is real.
    from huggingface_hub import HfApi

    _, home_dir, _, recipe, _ = home
    folder = tmp_path / "run"
    shutil.copytree(home_dir / "runs" / "mine", folder)
    uploads, network = [], {"up": False}

    def upload_folder(self, repo_id, folder_path, allow_patterns, **kw):
        if not network["up"]:
            raise ConnectionError("no route to huggingface.co")
        uploads.append((repo_id, list(allow_patterns)))

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: None)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    args = ["--config", str(recipe), f"training.output_dir={folder}", "hub.push=true", "hub.model_id=someone/mine"]
    down = recipe_here(PRETRAIN, *args)
    assert down.returncode == 0 and "push failed (model saved locally)" in down.stdout, down.stderr
    assert uploads == [] and not (folder / ".toolkit-pushed.json").exists()
    network["up"] = True
    up = recipe_here(PRETRAIN, *args)
    assert up.returncode == 0 and "https://huggingface.co/someone/mine" in up.stdout, up.stderr
    assert uploads == [("someone/mine", files_to_push(folder))]
    assert recipe_here(PRETRAIN, *args).returncode == 0
    assert len(uploads) == 1  # pushed once: the next rerun has nothing left to do
