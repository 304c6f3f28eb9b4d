"""Streaming pretraining, in real subprocesses: bounded memory, exact resume, refusals."""

import copy
import json
import signal
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import PRETRAIN, ROOT, TINY_RECIPE, run, write_recipe

# Runs the command and prints its peak resident memory (kB): the wrapper's only child is the run.
PEAK_RSS = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode;"
            " print('peak_rss_kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")


def corpus(path, copies):
    """A JSON-lines corpus of the Python docs, `copies` times over (each copy tagged, so no two texts are equal)."""
    from toolkit.data.sources import python_docs

    docs = python_docs()["text"]
    with open(path, "w") as f:
        for copy_ in range(copies):
            for text in docs:
                f.write(json.dumps({"text": f"[{copy_}] {text}"}) + "\n")
    return path


@pytest.fixture(scope="module")
def streamed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stream")
    recipe = copy.deepcopy(TINY_RECIPE)
    recipe["tokenizer"]["training_documents"] = 300
    recipe["data"] = {"sources": [{"files": str(corpus(folder / "small.jsonl", 5))}], "block_size": 64,
                      "streaming": True, "eval_documents": 40, "shuffle_buffer": 500,
                      "cleaning": {"deduplicate": False}, "cache_dir": str(folder / "cache")}
    recipe["training"].update(max_steps=12, save_steps=6, eval_steps=6, logging_steps=3,
                              output_dir=str(folder / "small"))
    path = write_recipe(folder, recipe)
    result = run([sys.executable, "-c", PEAK_RSS, sys.executable, str(PRETRAIN), "--config", str(path)])
    assert result.returncode == 0, result.stderr[-3000:]
    return folder, path, result


def peak_kb(result) -> int:
    return int(result.stdout.rsplit("peak_rss_kb", 1)[1].split()[0])


@pytest.mark.slow
def test_streaming_trains_and_scores_a_held_out_head(streamed):
    folder, _, result = streamed
    out = folder / "small"
    stats = json.loads((out / "data_stats.json").read_text())
    assert stats["streaming"] is True and stats["eval_documents"] == 40 and stats["eval_tokens"] > 0
    results = json.loads((out / "eval_results.json").read_text())
    assert results["eval_perplexity"] < results["init_eval_perplexity"]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 12
    assert "loaded from cache" not in result.stdout


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_corpus(streamed):
    folder, path, small = streamed
    big = run([sys.executable, "-c", PEAK_RSS, sys.executable, str(PRETRAIN), "--config", str(path),
               f"data.sources[0].files={corpus(folder / 'big.jsonl', 20)}", f"training.output_dir={folder / 'big'}"])
    assert big.returncode == 0, big.stderr[-3000:]
    assert (folder / "big.jsonl").stat().st_size >= 4 * (folder / "small.jsonl").stat().st_size
    print(f"peak RSS: {peak_kb(small):,} kB for the small corpus, {peak_kb(big):,} kB for the 4x corpus")
    assert peak_kb(big) == pytest.approx(peak_kb(small), rel=0.2)


@pytest.mark.slow
def test_killed_streaming_run_resumes_with_exactly_the_unseen_data(streamed):
    folder, path, _ = streamed
    out = folder / "killed"
    killed = run([sys.executable, str(ROOT / "tests" / "kill_during.py"), "step", "9", str(PRETRAIN),
                  "--config", str(path), f"training.output_dir={out}"])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = run([sys.executable, str(PRETRAIN), "--config", str(path), f"training.output_dir={out}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {out / 'checkpoint-6'}" in resumed.stdout
    reference, final = load_file(folder / "small" / "model.safetensors"), load_file(out / "model.safetensors")
    for name in reference:
        assert torch.equal(reference[name], final[name]), name


@pytest.mark.parametrize("change, fragment", [
    ({"data.cleaning.deduplicate": True}, "data.cleaning.deduplicate=false"),
    ({"data.format": "chat"}, "data.streaming reads plain text"),
    ({"training.max_steps": -1}, "set training.max_steps"),
])
def test_streaming_refusals(tiny, tmp_path, change, fragment):
    from toolkit.errors import ToolkitError
    from toolkit.recipe import load_recipe

    tiny["data"].update(streaming=True, cleaning={"deduplicate": False})
    overrides = [f"{key}={value}" for key, value in change.items()]
    with pytest.raises(ToolkitError, match=fragment.replace(".", r"\.")):
        load_recipe(write_recipe(tmp_path, tiny), overrides)
