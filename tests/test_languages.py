"""Every language scored as its reference implementation scores it: BLEU by target language
(sacrebleu's command line with -l), ROUGE for scripts without spaces, CMRC 2018 EM/F1 for Chinese."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys

import numpy as np
import pytest
from transformers import EvalPrediction

from toolkit import metrics
from toolkit.data.sources import LOCALE_DIR, gettext_pairs
from toolkit.errors import ToolkitError
from toolkit.recipe import Tokenizer
from toolkit.scoring import generation_metrics
from toolkit.tasks.seq2seq.section import Seq2Seq, check_metrics, metric_options
from toolkit.tokenizer import train_bpe

SACREBLEU = shutil.which("sacrebleu") or None


def _pairs(lang: str, n: int = 300) -> tuple[list[str], list[str]]:
    """Real references (the machine's gettext catalogs) and a system output made from them by editing:
    every third line loses its last two characters, every fifth has its halves swapped."""
    if not (LOCALE_DIR / lang / "LC_MESSAGES").is_dir():
        pytest.skip(f"no {lang} gettext catalogs on this machine")
    targets = [t.replace("\n", " ") for t in gettext_pairs(lang)["target"] if 4 <= len(t) <= 60][:n]
    hypotheses = []
    for i, t in enumerate(targets):
        h = t[:-2] if i % 3 == 0 else t
        hypotheses.append(h[len(h) // 2:] + h[: len(h) // 2] if i % 5 == 0 else h)
    return hypotheses, targets


def _cli(tmp_path, hypotheses, references, *args) -> float:
    """The `sacrebleu` command line's score, in its own process, as a user would run it."""
    hyp, ref = tmp_path / "hyp.txt", tmp_path / "ref.txt"
    hyp.write_text("\n".join(hypotheses) + "\n", encoding="utf-8")
    ref.write_text("\n".join(references) + "\n", encoding="utf-8")
    command = [SACREBLEU] if SACREBLEU else [sys.executable, "-m", "sacrebleu"]
    out = subprocess.run([*command, str(ref), "-i", str(hyp), "-b", "-w", "4", *args], capture_output=True,
                         text=True, check=True)
    return float(out.stdout.strip())


def _through_the_run(texts: list[str], references: list[str], spec: Seq2Seq, names: list[str]) -> dict:
    """The seq2seq run's scoring path: token ids (a real byte-level BPE) decoded, then scored with the recipe's options."""
    tokenizer = train_bpe(iter(texts + references), Tokenizer(vocab_size=500), length=2 * len(texts))
    encode = lambda rows: tokenizer(rows, padding=True, add_special_tokens=False, return_tensors="np")["input_ids"]  # noqa: E731
    predictions, labels = encode(texts), encode(references)
    labels = np.where(labels == tokenizer.pad_token_id, -100, labels)  # the Trainer pads labels with -100
    return generation_metrics(tokenizer, names, metric_options(spec))(EvalPrediction(predictions, labels))


@pytest.mark.slow
@pytest.mark.parametrize("lang, code, cli_lang", [("zh_CN", "zh", "en-zh"), ("de", "de", "en-de")])
def test_bleu_and_chrf_equal_the_sacrebleu_command_line_with_the_language_pair(tmp_path, lang, code, cli_lang):
    hypotheses, references = _pairs(lang)
    cli_bleu = _cli(tmp_path, hypotheses, references, "-l", cli_lang, "-m", "bleu")
    cli_chrf = _cli(tmp_path, hypotheses, references, "-l", cli_lang, "-m", "chrf")
    module = metrics.load("bleu").compute(predictions=hypotheses, references=references, trg_lang=code)
    assert module["bleu"] == pytest.approx(cli_bleu, abs=0.01)
    assert ("tok:zh" if code == "zh" else "tok:13a") in module["bleu_signature"]
    spec = Seq2Seq(target_lang=lang)
    run = _through_the_run(hypotheses, references, spec, ["bleu", "chrf"])
    assert run["bleu"] == pytest.approx(cli_bleu, abs=0.01) and run["chrf"] == pytest.approx(cli_chrf, abs=0.01)
    if code == "zh":  # the tokenizer matters: 13a reads a Chinese line as a few long "words"
        plain = metrics.load("bleu").compute(predictions=hypotheses, references=references)["bleu"]
        assert abs(cli_bleu - plain) > 1


def test_a_bleu_tokenizer_this_machine_cannot_build_is_refused_before_any_work():
    with pytest.raises(ToolkitError, match=r"seq2seq.bleu_tokenize='spaces' is not a sacrebleu tokenizer; use one of"):
        check_metrics(Seq2Seq(bleu_tokenize="spaces"))
    assert check_metrics(Seq2Seq(target_lang="ja", bleu_tokenize="char")) == ["bleu", "chrf"]
    if importlib.util.find_spec("MeCab") is None:
        with pytest.raises(ToolkitError, match=r"BLEU for target_lang 'ja' tokenizes with MeCab, which is not installed:"
                                               r" pip install sacrebleu\[ja\]"):
            check_metrics(Seq2Seq(target_lang="ja"))


def test_a_language_is_read_from_a_locale_a_tag_or_its_english_name():
    assert [metrics.language_code(x) for x in ("zh_CN", "zh-Hans", "ZH", "Chinese", "ja_JP.UTF-8", "de", None)] == [
        "zh", "zh", "zh", "zh", "ja", "de", ""]
    assert metric_options(Seq2Seq(target_lang="Chinese"))["bleu"] == {"trg_lang": "zh", "tokenize": None}


def test_rouge_scores_chinese_by_character_and_english_as_rouge_score_does():
    rouge = metrics.load("rouge")
    same = rouge.compute(predictions=["北京大学图书馆"], references=["北京大学图书馆"], language="zh")
    assert same == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0, "rougeLsum": 1.0}
    # rouge_score alone keeps only a-z and 0-9: the Chinese text scores nothing.
    assert rouge.compute(predictions=["北京大学图书馆"], references=["北京大学图书馆"])["rouge1"] == 0.0
    # By hand: [用, python, 打, 开, 文, 件] against [用, python, 读, 取, 文, 件]: 4 of 6 words shared,
    # bigrams (用 python) and (文 件) 2 of 5, longest common subsequence 4.
    mixed = rouge.compute(predictions=["用 Python 打开文件"], references=["用 python 读取文件"], language="zh_CN",
                          rouge_types=["rouge1", "rouge2", "rougeL"])
    assert mixed["rouge1"] == pytest.approx(4 / 6) and mixed["rouge2"] == pytest.approx(2 / 5)
    assert mixed["rougeL"] == pytest.approx(4 / 6)
    english = dict(predictions=["the cat sat on a mat", "a dog"], references=["the cat sat on the mat", "the dog ran"])
    assert rouge.compute(**english, language="en") == rouge.compute(**english)  # untouched outside CJK


def test_squad_f1_in_chinese_follows_cmrc_2018():
    squad = metrics.load("squad")
    chinese = squad.compute(predictions=["北京大学"], references=[["北京大学图书馆"]], language="zh")
    assert chinese["f1"] == pytest.approx(72.73, abs=0.005) and chinese["exact_match"] == 0
    assert squad.compute(predictions=["北京大学"], references=[["北京大学图书馆"]])["f1"] == 0  # SQuAD's words
    punctuated = squad.compute(predictions=["《红楼梦》"], references=[["红楼梦"]], language="zh")
    assert punctuated == {"exact_match": 100.0, "f1": 100.0}  # CMRC drops the full-width marks
    english = dict(predictions=["the Denver Broncos", "Santa Clara"], references=[["Denver Broncos"], ["Levi's Stadium"]])
    assert squad.compute(**english, language="en") == squad.compute(**english) == {"exact_match": 50.0, "f1": 50.0}


def test_the_qa_task_scores_chinese_answers_with_qa_language_zh():
    from toolkit.tasks.qa.section import QA
    from toolkit.tasks.qa.spans import squad_scores

    assert QA().language == "en"
    assert squad_scores({"q": "北京大学"}, {"q": ["北京大学图书馆"]}, QA(language="zh").language)["f1"] == 72.73
    assert squad_scores({"q": "北京大学"}, {"q": ["北京大学图书馆"]})["f1"] == 0  # English: one word, not shared


def test_gettext_pairs_exist_for_any_installed_locale_and_a_missing_one_lists_those_present(recipe_here, tmp_path):
    from tests.conftest import ROOT
    from toolkit.data.sources import builtin_corpus, installed_locales

    if "zh_CN" not in installed_locales():
        pytest.skip("no zh_CN gettext catalogs on this machine")
    pairs = builtin_corpus("gettext-en-zh_CN")()
    assert len(pairs["source"]) > 1000 and any(metrics.is_cjk_character(c) for c in pairs["target"][0] + pairs["target"][1])
    result = recipe_here(ROOT / "recipes" / "seq2seq.py", "data.sources=[{builtin: gettext-en-zh_cn}]",
                         f"training.output_dir={tmp_path / 'out'}")
    assert result.returncode == 2
    line = result.stderr.strip()
    assert line.startswith("error: no gettext catalogs for 'zh_cn' under /usr/share/locale; did you mean"
                           " gettext-en-zh_CN? the locales here are ") and "zh_CN" in line and "\n" not in line


def test_chinese_round_trips_through_a_new_bpe_and_a_cut_character_is_not_scored(tmp_path):
    """A byte-level BPE trained on Chinese gives the text back exactly; generation cut inside a character
    (max_new_tokens) leaves no broken character in the decoded, scored text."""
    _, references = _pairs("zh_CN", 200)
    tokenizer = train_bpe(iter(references), Tokenizer(vocab_size=400), length=len(references))
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in references]
    assert tokenizer.batch_decode(ids) == references
    cut = next((row[:k], t) for row, t in zip(ids, references) for k in range(1, len(row))
               if tokenizer.decode(row[:k]).endswith("\ufffd"))  # a byte-level token boundary inside a character
    assert "\ufffd" in tokenizer.decode(cut[0])
    scores = generation_metrics(tokenizer, ["chrf"])
    predictions = np.array([cut[0] + [tokenizer.pad_token_id] * (len(ids[0]) + 50 - len(cut[0]))])
    labels = np.array([tokenizer(cut[1], add_special_tokens=False)["input_ids"]])
    scores(EvalPrediction(predictions, labels))
    decoded = scores.texts["eval"][0][0]
    assert "\ufffd" not in decoded and cut[1].startswith(decoded) and decoded
