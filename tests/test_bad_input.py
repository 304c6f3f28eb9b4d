"""Bad input: one line naming the problem, a non-zero exit, no traceback, nothing written."""

import copy
import json
import struct
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.conftest import FINETUNE, PRETRAIN, TINY_RECIPE, run, run_pretrain, write_recipe
from toolkit.data.prepare import split_corpus
from toolkit.data.sources import load_source
from toolkit.recipe import Source, load_recipe


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


@pytest.mark.slow
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


@pytest.mark.slow
def test_accelerate_launch_passes_the_message_and_the_failure_on(tiny, tmp_path):
    result = run(["accelerate", "launch", "-q", "--num_processes", "1", "--cpu", str(PRETRAIN), "--config", str(tmp_path / "nope.yaml")])
    assert result.returncode != 0
    assert "error: recipe file not found" in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------------------------
# Issue 14, finding 6: what a new user ran, each as a real process. Every case builds its files in the test's
# folder and says what it runs (a recipe script, or `toolkit validate --data`) and what the one error line must
# hold; a case that is no refusal (the data still trains) says what must be true instead.

VALIDATE = "validate"  # python -m toolkit.cli validate RECIPE --data
LETTERS = [f"Letter {i}: the café on the corner serves crêpes, and the résumé of the day's news is read aloud."
           for i in range(50)]
FAKE_TOKEN = "hf_" + "Ab3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eFh"


def _files(recipe: dict, path, **keys):
    recipe["data"]["sources"] = [{"files": str(path), **keys}]
    return path


def _csv(texts) -> str:
    return "text\n" + "".join(f'"{t}"\n' for t in texts)


def _jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def latin1_csv(tmp, recipe):
    _files(recipe, tmp / "notes.csv").write_bytes(_csv(LETTERS).encode("latin-1"))
    return PRETRAIN, ("notes.csv, line 2: not UTF-8 text (byte 0xe9", "re-save it as UTF-8", "data.sources[0].encoding")


def latin1_recipe(tmp, recipe):
    text = "# Recette d'entraînement de l'équipe\n" + yaml.safe_dump(recipe, sort_keys=False)
    (tmp / "recipe.yaml").write_bytes(text.encode("latin-1"))
    return PRETRAIN, ("recipe.yaml, line 1: not UTF-8 text (byte 0xee", "re-save the recipe as UTF-8")


def jsonl_bad_line(tmp, recipe):
    rows = [json.dumps({"text": t}) for t in LETTERS]
    rows[6] = '{"text": "a quote that never closes}'
    _files(recipe, tmp / "letters.jsonl").write_text("\n".join(rows) + "\n")
    return VALIDATE, ("letters.jsonl, line 7: not valid JSON (Unterminated string", "fix or remove the line")


def binary_txt(tmp, recipe):
    _files(recipe, tmp / "notes.txt").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)  # an image, misnamed
    return PRETRAIN, ("notes.txt is not a text file (a NUL byte at offset", "remove it from data.sources[0].files")


def empty_jsonl(tmp, recipe):
    _files(recipe, tmp / "letters.jsonl").write_text("")
    return VALIDATE, ("letters.jsonl is empty", "remove it from data.sources[0].files")


def eval_fraction_above_the_documents(tmp, recipe):
    _jsonl(_files(recipe, tmp / "letters.jsonl"), [{"text": t} for t in LETTERS])
    recipe["data"]["eval_fraction"] = 0.99
    return PRETRAIN, ("data.eval_fraction=0.99 of the 50 documents", "holds out 50, leaving none to train on",
                      "lower data.eval_fraction")


def list_valued_text_column(tmp, recipe):
    rows = [{"text": t} for t in LETTERS]
    rows[10] = {"text": LETTERS[10].split(", ")}
    _jsonl(_files(recipe, tmp / "letters.jsonl"), rows)
    return VALIDATE, ("letters.jsonl, line 11: column 'text' holds a list, not text", "data.sources[0].text_column")


def negative_limit(tmp, recipe):
    _jsonl(_files(recipe, tmp / "letters.jsonl", limit=-5), [{"text": t} for t in LETTERS])
    return PRETRAIN, ("recipe.yaml, line", "data.sources[0].limit must be at least 1, got -5")


def zero_max_steps(tmp, recipe):
    recipe["training"]["max_steps"] = 0
    return PRETRAIN, ("recipe.yaml, line", "training.max_steps=0 means nothing",
                      "at least 1, or -1 to train for training.num_train_epochs")


def negative_save_steps(tmp, recipe):
    return VALIDATE, ("the command line: training.save_steps=-10 means nothing", "greater than 0"), ["training.save_steps=-10"]


def corrupt_gguf(tmp, recipe):
    pytest.importorskip("gguf")
    # A download cut short: the magic, version 3, one tensor and two metadata entries announced, then nothing.
    (tmp / "model.gguf").write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1, 2) + struct.pack("<Q", 20) + b"general.")
    recipe["model"] = {"name_or_path": str(tmp / "model.gguf")}
    return FINETUNE, ("model.gguf is not a GGUF file that can be read", "download it again")


def vocabulary_smaller_than_the_bytes(tmp, recipe):
    recipe["tokenizer"]["vocab_size"] = 100
    return VALIDATE, ("recipe.yaml, line", "tokenizer.vocab_size=100 is too small for a byte-level BPE", "at least 258")


def three_files_hold_out_a_tenth_of_each(tmp, recipe):
    (tmp / "books").mkdir()
    for i in range(3):
        (tmp / "books" / f"{i}.txt").write_text("\n\n".join(LETTERS[i * 15:(i + 1) * 15]))
    _files(recipe, tmp / "books" / "*.txt")
    return VALIDATE, (), [], lambda result, tmp: "3 training and 3 held-out examples" in result.stdout


def _chats(tmp, recipe, tiny_base, **data):
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{2 * i}."}]} for i in range(20)]
    rows[3]["messages"][0]["role"] = "narrator"
    _jsonl(_files(recipe, tmp / "chats.jsonl"), rows)
    recipe["model"] = {"name_or_path": str(tiny_base)}
    recipe["tokenizer"] = {}
    recipe["data"].update(format="chat", max_length=128, **data)


def chat_row_with_an_unknown_role_is_skipped_and_counted(tmp, recipe, tiny_base):
    _chats(tmp, recipe, tiny_base)
    recipe["training"].update(max_steps=1, eval_strategy="no", save_steps=1)
    del recipe["training"]["eval_steps"]
    recipe["evaluation"] = {"before_training": False, "sample_prompts": ["Hi"], "max_new_tokens": 2}

    def counted(result, tmp):
        stats = tmp / "out" / "data_stats.json"
        return (stats.is_file() and json.loads(stats.read_text())["skipped_bad_rows"] == 1
                and "chats.jsonl, line 4" in result.stdout + result.stderr)

    return FINETUNE, (), [], counted


def chat_row_with_an_unknown_role_refused_when_asked(tmp, recipe, tiny_base):
    _chats(tmp, recipe, tiny_base, bad_rows="error")
    return VALIDATE, ("chats.jsonl, line 4: every message needs a role (system, user, assistant)",
                      "set data.bad_rows=skip")


def token_on_the_command_line(tmp, recipe):
    return PRETRAIN, ("override 'hub_token=***'", "HF_TOKEN"), [f"hub_token={FAKE_TOKEN}"], \
        lambda result, tmp: FAKE_TOKEN[3:] not in result.stdout + result.stderr


def empty_output_dir(tmp, recipe):
    recipe["training"]["output_dir"] = ""
    return PRETRAIN, ("training.output_dir is empty",)


def output_folder_that_cannot_be_made(tmp, recipe):
    (tmp / "taken").write_text("a file where the run's folder would go")
    recipe["training"]["output_dir"] = str(tmp / "taken" / "out")
    return VALIDATE, ("training.output_dir", "taken")


CASES = [
    latin1_csv, latin1_recipe, jsonl_bad_line, binary_txt, empty_jsonl, eval_fraction_above_the_documents,
    list_valued_text_column, negative_limit, zero_max_steps, negative_save_steps, corrupt_gguf,
    vocabulary_smaller_than_the_bytes, three_files_hold_out_a_tenth_of_each,
    chat_row_with_an_unknown_role_is_skipped_and_counted, chat_row_with_an_unknown_role_refused_when_asked,
    token_on_the_command_line,
    empty_output_dir,  # implemented with the output-folder resolution (issue 14, finding 1)
    output_folder_that_cannot_be_made,  # implemented with the output-folder resolution (issue 14, finding 1)
]


def _run_case(case, tmp, tiny_base):
    """Build the case's files and recipe in `tmp`, run what it names; (recipe, expectations, result)."""
    recipe = copy.deepcopy(TINY_RECIPE)
    recipe["training"]["output_dir"], recipe["data"]["cache_dir"] = str(tmp / "out"), str(tmp / "cache")
    wants_base = "tiny_base" in case.__code__.co_varnames
    command, fragments, *rest = case(tmp, recipe, tiny_base) if wants_base else case(tmp, recipe)
    overrides, check = (rest + [[], None][len(rest):])[:2]
    path = tmp / "recipe.yaml"
    if not path.exists():
        write_recipe(tmp, recipe)
    if command == VALIDATE:
        result = run([sys.executable, "-m", "toolkit.cli", "validate", str(path), "--data", *overrides])
    else:
        result = run([sys.executable, str(command), "--config", str(path), *overrides])
    return recipe, fragments, check, result


@pytest.fixture(scope="module")
def bad_input_runs(request, tmp_path_factory):
    """The table's selected cases, run two at a time: each process spends most of its seconds importing
    torch and transformers, so on 2 cores a pair takes about the time of one."""
    chosen = [item.callspec.params["case"] for item in request.session.items
              if getattr(item, "originalname", "") == "test_a_new_users_bad_input_gets_one_line_and_nothing_is_written"]
    base = request.getfixturevalue("tiny_base") if any("tiny_base" in c.__code__.co_varnames for c in chosen) else None
    with ThreadPoolExecutor(max_workers=2) as pool:
        return {case: pool.submit(_run_case, case, tmp_path_factory.mktemp(case.__name__), base) for case in chosen}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.__name__)
def test_a_new_users_bad_input_gets_one_line_and_nothing_is_written(case, bad_input_runs):
    """One line naming the file (and line) and the fix, exit status 2, no traceback, no output folder, no cache."""
    recipe, fragments, check, result = bad_input_runs[case].result()
    tmp = Path(recipe["data"]["cache_dir"]).parent
    if check is not None:
        assert check(result, tmp), result.stdout[-2000:] + result.stderr[-2000:]
    if fragments:
        assert result.returncode == 2, result.stderr[-2000:]
        assert_refused(result, *fragments)
        assert not (tmp / "out").exists() and not (tmp / "cache").exists()
    else:
        assert result.returncode == 0, result.stderr[-2000:]


def test_the_encoding_the_message_names_reads_a_latin1_file_as_written(tmp_path):
    (tmp_path / "notes.csv").write_bytes(_csv(LETTERS[:3]).encode("latin-1"))
    assert load_source(Source(files=str(tmp_path / "notes.csv"), encoding="latin-1"), 0)["text"] == LETTERS[:3]


def test_three_files_give_the_last_tenth_of_each_to_evaluation(tiny, tmp_path):
    """Too few documents to hold out 10% of them whole: the held-out share of the text is still 10%."""
    texts = ["\n\n".join(LETTERS[a:b]) for a, b in ((0, 5), (5, 20), (20, 50))]
    for i, text in enumerate(texts):
        (tmp_path / f"{i}.txt").write_text(text)
    tiny["data"]["sources"] = [{"files": str(tmp_path / "*.txt")}]
    train, held_out, stats = split_corpus(load_recipe(write_recipe(tmp_path, tiny)))
    assert sorted(held_out["text"], key=len) == [next(t for t in held_out["text"] if text.endswith(t)) for text in texts]
    share = sum(map(len, held_out["text"])) / sum(map(len, texts))
    assert 0.08 < share < 0.12 and len(train) == 3, share
