"""The toolkit's offline metric modules and recipes/evaluate.py, checked against the reference tools.

BLEU and chrF are compared with the `sacrebleu` command line and ROUGE with `rouge_score`,
on real text built at run time (the German translations of this machine's gettext
catalogs, the Python reference); SQuAD EM/F1 on hand-worked cases.
"""

from __future__ import annotations

import gettext
import glob
import json
import math
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.conftest import ROOT, run
from toolkit import metrics
from toolkit.errors import ToolkitError

EVALUATE = ROOT / "recipes" / "evaluate.py"


# --------------------------------------------------------------------------- real text, built at run time


def german_messages(count: int = 400) -> list[str]:
    """German UI messages from the gettext catalogs (one line each, 6-25 words), in a fixed order."""
    found = {}
    for path in sorted(glob.glob("/usr/share/locale/de/LC_MESSAGES/*.mo")):
        try:
            with open(path, "rb") as f:
                catalog = gettext.GNUTranslations(f)._catalog
        except (OSError, UnicodeDecodeError):  # a catalog in another encoding: not needed
            continue
        for english, german in catalog.items():
            if isinstance(english, str) and english and isinstance(german, str) and german == german.strip() \
                    and "\n" not in german and "\t" not in german and 6 <= len(german.split()) <= 25:
                found.setdefault(english, german)
    if len(found) < count:
        pytest.skip(f"needs {count} German gettext messages under /usr/share/locale/de; found {len(found)}")
    ordered = [found[k] for k in sorted(found)]
    return ordered[:: len(ordered) // count][:count]


def perturb(text: str, i: int, pool: list[str]) -> str:
    """A deterministic 'system output': the reference with one kind of error, chosen by i."""
    words = text.split()
    kind, at = i % 7, i % len(words)
    if kind == 1:
        del words[at]
    elif kind == 2 and at + 1 < len(words):
        words[at], words[at + 1] = words[at + 1], words[at]
    elif kind == 3:
        words[at] = pool[(7 * i) % len(pool)].split()[0]
    elif kind == 4:
        words = words[: max(1, 2 * len(words) // 3)]
    elif kind == 5:
        words = [w.lower() for w in words]
    elif kind == 6 and i % 5 == 0:
        words = []  # an empty output now and then
    return " ".join(words)


@pytest.fixture(scope="module")
def translations(tmp_path_factory):
    """Two reference files and a hypothesis file, plus the same references as JSONL lists."""
    refs = german_messages()
    second = [perturb(r, i + 3, refs) or r for i, r in enumerate(refs)]
    hyps = [perturb(r, i, refs) for i, r in enumerate(refs)]
    folder = tmp_path_factory.mktemp("translations")
    files = {"ref": refs, "ref2": second, "hyp": hyps}
    for name, lines in files.items():
        (folder / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with open(folder / "refs.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps([a, b], ensure_ascii=False) + "\n" for a, b in zip(refs, second))
    return folder, files


def sacrebleu_cli(*refs, hyp) -> dict[str, dict]:
    """BLEU and chrF from the sacrebleu command line, 4 decimals, keyed by metric."""
    out = subprocess.run([sys.executable, "-m", "sacrebleu", *map(str, refs), "-i", str(hyp), "-m", "bleu", "chrf",
                          "-w", "4", "--format", "json"], capture_output=True, text=True, check=True).stdout
    return {r["name"]: r for r in json.loads(out)}


# --------------------------------------------------------------------------- BLEU and chrF


def test_bleu_and_chrf_equal_the_sacrebleu_command_line(translations):
    folder, files = translations
    cli = sacrebleu_cli(folder / "ref.txt", hyp=folder / "hyp.txt")
    bleu = metrics.load("bleu").compute(predictions=files["hyp"], references=files["ref"])
    chrf = metrics.load("chrf").compute(predictions=files["hyp"], references=files["ref"])
    assert 20 < cli["BLEU"]["score"] < 90  # a real, middling score: the comparison means something
    assert bleu["bleu"] == pytest.approx(cli["BLEU"]["score"], abs=0.01)
    assert chrf["chrf"] == pytest.approx(cli["chrF2"]["score"], abs=0.01)
    assert bleu["bleu_signature"] == cli["BLEU"]["signature"]
    assert chrf["chrf_signature"] == cli["chrF2"]["signature"]


@pytest.mark.slow
def test_evaluate_recipe_with_several_references_equals_sacrebleu_with_several_reference_files(translations, tmp_path):
    from toolkit.scoring import read_pairs, score_texts

    folder, _ = translations
    cli = sacrebleu_cli(folder / "ref.txt", folder / "ref2.txt", hyp=folder / "hyp.txt")
    # The recipe, given the two files as sacrebleu takes them...
    result = run([sys.executable, str(EVALUATE), "--predictions", str(folder / "hyp.txt"),
                  "--references", str(folder / "ref.txt"), "--references", str(folder / "ref2.txt"),
                  "--metrics", "bleu", "chrf", "--output_dir", str(tmp_path)], timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    recipe = json.loads((tmp_path / "eval_results.json").read_text())
    assert recipe["eval_samples"] == 400 and "eval_rouge1" not in recipe
    # ...and the same references as one JSONL file of lists, read and scored in this process.
    preds, refs = read_pairs(str(folder / "hyp.txt"), [str(folder / "refs.jsonl")])
    jsonl = {f"eval_{k}": v for k, v in score_texts(preds, refs, ["bleu", "chrf"]).items()}
    for got in (recipe, jsonl):
        assert got["eval_bleu"] == pytest.approx(cli["BLEU"]["score"], abs=0.01)
        assert got["eval_chrf"] == pytest.approx(cli["chrF2"]["score"], abs=0.01)
        assert got["eval_bleu_signature"] == cli["BLEU"]["signature"]  # nrefs:2


def test_combine_gives_bleu_and_chrf_as_each_module_alone(translations):
    _, files = translations
    preds, refs = files["hyp"][:100], files["ref"][:100]
    combined = metrics.combine(["bleu", "chrf"]).compute(predictions=preds, references=refs)
    assert combined["bleu"] == metrics.load("bleu").compute(predictions=preds, references=refs)["bleu"]
    assert combined["chrf"] == metrics.load("chrf").compute(predictions=preds, references=refs)["chrf"]
    import evaluate  # the library's own combine, over modules loaded by path, works the same

    direct = evaluate.combine([str(metrics.path("bleu")), str(metrics.path("chrf"))])
    assert direct.compute(predictions=preds, references=refs)["chrf"] == combined["chrf"]


def test_metric_modules_load_by_path_with_the_network_cut(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network is off in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in metrics.NAMES:
        assert metrics.load(name).name == name


# --------------------------------------------------------------------------- ROUGE


def summaries() -> tuple[list[str], list[str]]:
    """Reference 'summaries' from the Python reference (sentences on lines) and perturbed predictions."""
    from pydoc_data.topics import topics

    refs = []
    for name in sorted(topics)[:60]:
        sentences = [s.strip() + "." for s in " ".join(topics[name].split()).split(". ") if len(s.split()) > 3]
        if len(sentences) >= 3:
            refs.append("\n".join(sentences[:3]))
    preds = ["\n".join(perturb(s, i + j, refs) for j, s in enumerate(r.split("\n"))) for i, r in enumerate(refs)]
    return preds, refs


@pytest.mark.slow
@pytest.mark.parametrize("use_stemmer", [False, True])
def test_rouge_equals_rouge_score_mean_f_measures(use_stemmer):
    from rouge_score import rouge_scorer

    preds, refs = summaries()
    assert len(preds) > 30
    types = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    scorer = rouge_scorer.RougeScorer(types, use_stemmer=use_stemmer)
    expected = {t: np.mean([scorer.score(r, p)[t].fmeasure for r, p in zip(refs, preds)]) for t in types}
    got = metrics.load("rouge").compute(predictions=preds, references=refs, use_stemmer=use_stemmer)
    for t in types:
        assert got[t] == pytest.approx(expected[t], abs=1e-6)
    assert got["rougeLsum"] != pytest.approx(got["rougeL"], abs=1e-4)  # the newlines were seen as sentences


def test_rouge_with_several_references_takes_the_best_like_score_multi():
    from rouge_score import rouge_scorer

    preds, refs = summaries()
    pairs = [[r, refs[(i + 1) % len(refs)]] for i, r in enumerate(refs)]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"])
    expected = np.mean([scorer.score_multi(r, p)["rouge1"].fmeasure for r, p in zip(pairs, preds)])
    got = metrics.load("rouge").compute(predictions=preds, references=pairs, rouge_types=["rouge1", "rougeL"])
    assert got["rouge1"] == pytest.approx(expected, abs=1e-6)


# --------------------------------------------------------------------------- SQuAD EM and F1, worked by hand

SQUAD_CASES = [
    # (prediction, gold answers, exact match, F1), F1 worked out on the normalised tokens
    ("The Eiffel Tower", ["Eiffel Tower"], 1, 1),  # article and case
    ("eiffel tower.", ["Eiffel Tower!"], 1, 1),  # punctuation
    ("  Eiffel\tTower \n", ["Eiffel Tower"], 1, 1),  # whitespace collapsed
    ("a history of an empire", ["History of the Empire"], 1, 1),  # articles inside the answer
    ("U.S.A.", ["usa"], 1, 1),  # punctuation inside a word goes, joining it
    ("another answer", ["an other answer"], 0, 0.5),  # 'an' only as a word: P = R = 1/2
    ("Broncos won", ["the Denver Broncos won easily"], 0, 2 / 3),  # P = 2/2, R = 2/4: F1 = 2/3
    ("the the cat cat cat", ["cat"], 0, 0.5),  # tokens are a multiset: P = 1/3, R = 1: F1 = 1/2
    ("1876", ["in 1875", "1876", "the year 1876"], 1, 1),  # the best of several gold answers
    # 'nikola teslas lab' vs 'lab of nikola tesla': 2 shared, P = 2/3, R = 2/4, F1 = 4/7 (beats 'tesla lab': 0.4)
    ("Nikola Tesla's lab", ["Tesla lab", "lab of Nikola Tesla"], 0, 4 / 7),
    ("", ["Paris"], 0, 0),  # an empty prediction
    ("The", ["The answer"], 0, 0),  # a prediction that normalises to nothing
    ("a", ["the"], 1, 0),  # both normalise to nothing: v1.1 counts the match but gives F1 0
    ("«Berlin»", ["Berlin"], 0, 0),  # only ASCII punctuation is removed, as in v1.1
]


@pytest.mark.parametrize("prediction,golds,em,f1", SQUAD_CASES, ids=[repr(c[0]) for c in SQUAD_CASES])
def test_squad_exact_match_and_f1_follow_the_v1_1_normalisation(prediction, golds, em, f1):
    got = metrics.load("squad").compute(predictions=[prediction], references=[golds])
    assert got["exact_match"] == pytest.approx(100 * em)
    assert got["f1"] == pytest.approx(100 * f1)


def test_squad_scores_a_question_without_answer_the_squad_2_way():
    # Hand-checked: abstaining on the unanswerable question scores 1 on it, an answer 0;
    # the answerable one scores as in v1.1 (EM 0, F1 2*(1/2)*(1/1)/(1/2+1) = 2/3).
    squad = metrics.load("squad")
    got = squad.compute(predictions=["", "red car"], references=[[], ["car"]])
    assert got["exact_match"] == pytest.approx(50.0) and got["f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    got = squad.compute(predictions=["the", "a car"], references=[[], ["car"]])  # "the" normalises to nothing
    assert got == {"exact_match": 100.0, "f1": 100.0}
    got = squad.compute(predictions=["a red car"], references=[[]])
    assert got == {"exact_match": 0.0, "f1": 0.0}


def test_squad_averages_over_questions():
    cases = [SQUAD_CASES[0], SQUAD_CASES[6], SQUAD_CASES[10], SQUAD_CASES[8]]  # EM 1, 0, 0, 1; F1 1, 2/3, 0, 1
    got = metrics.load("squad").compute(predictions=[c[0] for c in cases], references=[c[1] for c in cases])
    assert got == pytest.approx({"exact_match": 50.0, "f1": 100 * (8 / 3) / 4})
    one_string = metrics.load("squad").compute(predictions=["Eiffel Tower"], references=["the eiffel tower"])
    assert one_string == {"exact_match": 100.0, "f1": 100.0}  # one gold answer may be a plain string


# --------------------------------------------------------------------------- perplexity and the Trainer


def test_perplexity_weights_every_token_alike():
    got = metrics.load("perplexity").compute(nll_sum=[2.0, 4.0], num_tokens=[1, 3])
    assert got["perplexity"] == pytest.approx(math.exp(6 / 4))  # not exp((2/1 + 4/3) / 2)
    assert got["tokens"] == 4


def test_metrics_work_as_trainer_compute_metrics(tiny_base, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, EvalPrediction, Trainer, TrainingArguments

    from toolkit.data.packing import CausalCollator
    from toolkit.evaluation import token_nll
    from toolkit.scoring import generation_metrics

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    model = AutoModelForCausalLM.from_pretrained(tiny_base).eval()

    # Perplexity: the Trainer hands token_nll rows to compute_metrics, which passes them on.
    perplexity = metrics.load("perplexity")

    def compute_metrics(eval_pred):
        rows = eval_pred.predictions
        return perplexity.compute(nll_sum=rows[:, 0], num_tokens=rows[:, 1])

    texts = ["The import statement", "Return the number of items in a container, counted once each time.", "x = 1"]
    rows = [{"input_ids": tokenizer(t)["input_ids"]} for t in texts]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=2, report_to=[], use_cpu=True)
    trainer = Trainer(model=model, args=args, eval_dataset=Dataset.from_list(rows), compute_metrics=compute_metrics,
                      data_collator=CausalCollator(tokenizer.pad_token_id),
                      preprocess_logits_for_metrics=lambda logits, labels: token_nll(logits, labels))
    scores = trainer.evaluate()
    nll = sum(model(input_ids=torch.tensor([r["input_ids"]]), labels=torch.tensor([r["input_ids"]])).loss.item()
              * (len(r["input_ids"]) - 1) for r in rows)
    count = sum(len(r["input_ids"]) - 1 for r in rows)
    assert scores["eval_perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)

    # Generated ids against label ids, -100 where there is no token, as Seq2SeqTrainer gives them.
    refs = ["The import statement is executed.", "Return a new list."]
    hyps = ["The import statement runs.", "Return a list."]
    width = 16
    pad = lambda ids: ids + [-100] * (width - len(ids))  # noqa: E731
    label_ids = np.array([pad(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in refs])
    predictions = np.array([pad(tokenizer(h, add_special_tokens=False)["input_ids"]) for h in hyps])
    got = generation_metrics(tokenizer, ["bleu", "chrf", "rouge"])(EvalPrediction(predictions=predictions, label_ids=label_ids))
    expected = metrics.combine(["bleu", "chrf", "rouge"]).compute(predictions=hyps, references=refs)
    assert got["bleu"] == pytest.approx(expected["bleu"]) and got["rougeL"] == pytest.approx(expected["rougeL"])
    assert all(isinstance(v, float) for v in got.values())  # no signature strings in the Trainer's log


@pytest.mark.slow
def test_evaluate_recipe_scores_a_saved_causal_lm(tiny_base, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    docs = ["The import statement combines two operations; it searches for the named module.",
            "A list is a mutable sequence, typically used to store collections of homogeneous items.",
            "Return the absolute value of a number."] * 4
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"body": d}) + "\n" for d in docs))
    out = tmp_path / "eval"
    result = run([sys.executable, str(EVALUATE), "--model", str(tiny_base), "--data", str(data), "--text_column", "body",
                  "--block_size", "32", "--batch_size", "3", "--output_dir", str(out)], timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads((out / "eval_results.json").read_text())

    # The same number from the model's own loss, one 32-token row of the joined documents at a time.
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    model = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    # Documents joined by EOS, each opened by BOS only where the tokenizer has one of its own (this one has not).
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id not in (None, tokenizer.eos_token_id) else []
    stream = [t for d in docs for t in [*bos, *tokenizer(d, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]]
    nll = count = 0
    for start in range(0, len(stream), 32):
        row = torch.tensor([stream[start:start + 32]])
        if row.shape[1] >= 2:
            nll += model(input_ids=row, labels=row).loss.item() * (row.shape[1] - 1)
            count += row.shape[1] - 1
    assert got["eval_tokens"] == count
    assert got["eval_perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-4)
    assert got["eval_documents"] == len(docs)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("name", ["bleu", "chrf", "rouge", "squad"])
def test_bad_references_are_one_line_errors(name):
    metric = metrics.load(name)
    with pytest.raises(ToolkitError, match=r"2 predictions but 1 references"):
        metric.compute(predictions=["a b c", "d e f"], references=["a b c"])
    with pytest.raises(ToolkitError, match=r"reference 2 is empty"):
        metric.compute(predictions=["a b c", "d e f"], references=["a b c", "  "])
    if name != "squad":  # to squad, an empty list is a question without an answer (SQuAD 2.0)
        with pytest.raises(ToolkitError, match=r"reference 1 is empty"):
            metric.compute(predictions=["a b c"], references=[[]])
    with pytest.raises(ToolkitError, match=r"no references"):
        metric.compute(predictions=[], references=[])
    metric.add(prediction="a b c", reference="")  # one example at a time reaches the same check
    with pytest.raises(ToolkitError, match=r"reference 1 is empty"):
        metric.compute()


def test_unknown_metrics_and_impossible_combinations_are_refused():
    with pytest.raises(ToolkitError, match=r"unknown metric 'blue'; did you mean 'bleu'\?"):
        metrics.load("blue")
    with pytest.raises(ToolkitError, match=r"perplexity takes NLL sums"):
        metrics.combine(["bleu", "perplexity"])
    with pytest.raises(ToolkitError, match=r"unknown rouge_types \['rougeX'\]"):
        metrics.load("rouge").compute(predictions=["a"], references=["a"], rouge_types=["rouge1", "rougeX"])
    with pytest.raises(ToolkitError, match=r"no tokens to score"):
        metrics.load("perplexity").compute(nll_sum=[0.0], num_tokens=[0])
    with pytest.raises(ToolkitError, match=r"2 NLL sums but 1 token counts"):
        metrics.load("perplexity").compute(nll_sum=[1.0, 2.0], num_tokens=[3])


@pytest.mark.slow
@pytest.mark.parametrize("refs,fragment", [
    ("one\ntwo\n", "hyp.txt has 3 predictions but"),
    ("one\n\nthree\n", "ref.txt, line 2: empty reference"),
])
def test_evaluate_recipe_refuses_bad_files_in_one_line(tmp_path, refs, fragment):
    (tmp_path / "hyp.txt").write_text("one\ntwo\nthree\n")
    (tmp_path / "ref.txt").write_text(refs)
    result = run([sys.executable, str(EVALUATE), "--predictions", str(tmp_path / "hyp.txt"),
                  "--references", str(tmp_path / "ref.txt"), "--output_dir", str(tmp_path / "out")], timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr
    assert not (tmp_path / "out").exists()
