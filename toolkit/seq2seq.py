"""Translation and summarization: source/target pairs, a model that writes the target, generation-based scores.

Four ways to get the model: a config of any encoder-decoder type (t5, bart, marian, ...)
trained from scratch with a new tokenizer; pretrained encoder-decoder weights; an
EncoderDecoderModel warm-started from a pretrained encoder (its copy becomes the decoder,
with cross-attention added); or a decoder-only model (gpt2, llama, ..., from a config or
pretrained), which reads each pair as a prompt followed by its target and learns only the
target. Scores (BLEU and chrF, or ROUGE) come from the toolkit's offline metric modules,
on text generated with the recipe's beam settings.
"""

from __future__ import annotations

import logging
import string

from datasets import Dataset

from toolkit.data.tasks import IGNORE, bos_ids
from toolkit.errors import ToolkitError, first_line
from toolkit.recipe import Recipe, Seq2Seq

logger = logging.getLogger("toolkit")

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


def special_ids(tokenizer) -> tuple[int, int, int]:
    """(decoder start, end of sequence, padding) for any tokenizer: BPE (eos) or WordPiece ([CLS]/[SEP])."""
    if tokenizer.cls_token_id is not None and tokenizer.sep_token_id is not None:
        start, eos = tokenizer.cls_token_id, tokenizer.sep_token_id  # BERT-style: [CLS] text [SEP]
    else:
        eos = tokenizer.eos_token_id
        start = tokenizer.pad_token_id  # T5's convention: a start symbol no text ever contains
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    start = pad if start is None else start
    if eos is None:
        raise ToolkitError("the tokenizer has neither an eos nor a sep token; a seq2seq model needs one to stop")
    return start, eos, pad


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


def encode_prompts(tokenizer, spec: Seq2Seq, sources: list[str]) -> list[list[int]]:
    """Decoder-only prompts as token ids. A long source is cut at a token boundary before it is
    put in the template, so the template's ending, which cues the target, is never cut off."""
    enc = tokenizer(sources, add_special_tokens=False, truncation=True, max_length=spec.max_source_length,
                    return_offsets_mapping=True)
    cut = [s[: offsets[-1][1]] if len(offsets) == spec.max_source_length else s
           for s, offsets in zip(sources, enc["offset_mapping"])]
    template = prompt_template(spec)
    texts = [template.format(source=s, source_lang=spec.source_lang, target_lang=spec.target_lang) for s in cut]
    return [bos_ids(tokenizer) + ids for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def encode_pairs(ds: Dataset, tokenizer, spec: Seq2Seq, architecture: str = ENCODER_DECODER,
                 num_proc: int | None = None) -> Dataset:
    """Encoder-decoder: input_ids from the (prefixed) source, labels from the target ending in end-of-sequence.
    Decoder-only: input_ids are prompt, target and eos; labels are the same with the prompt masked out."""
    _, eos, _ = special_ids(tokenizer)

    def encode(batch):
        targets = tokenizer(batch["target_text"], add_special_tokens=False, truncation=True,
                            max_length=spec.max_target_length - 1)["input_ids"]
        targets = [t + [eos] for t in targets]
        if architecture == DECODER_ONLY:
            prompts = encode_prompts(tokenizer, spec, batch["source_text"])
            return {"input_ids": [p + t for p, t in zip(prompts, targets)],
                    "attention_mask": [[1] * (len(p) + len(t)) for p, t in zip(prompts, targets)],
                    "labels": [[IGNORE] * len(p) + t for p, t in zip(prompts, targets)]}
        sources = tokenizer([spec.prefix + s for s in batch["source_text"]], truncation=True,
                            max_length=spec.max_source_length)["input_ids"]
        # A tokenizer without special tokens of its own (a new BPE) marks the source's end with eos.
        sources = [ids if ids and ids[-1] == eos else ids[: spec.max_source_length - 1] + [eos] for ids in sources]
        return {"input_ids": sources, "attention_mask": [[1] * len(x) for x in sources], "labels": targets}

    return ds.map(encode, batched=True, num_proc=num_proc, remove_columns=ds.column_names, desc="encoding pairs")


def model_architecture(recipe: Recipe) -> str:
    """Encoder-decoder or decoder-only, from the config alone (no weights read): before any data work.
    `recipe.model.name_or_path` must already be resolved (a GGUF file converted)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES

    from toolkit.modeling import is_decoder_only

    spec = recipe.model
    if recipe.seq2seq.encoder:
        if spec.name_or_path:
            raise ToolkitError("set model.name_or_path or seq2seq.encoder, not both: seq2seq.encoder warm-starts a new"
                               " encoder-decoder, model.name_or_path loads a whole one")
        return ENCODER_DECODER
    if spec.name_or_path:
        try:
            kind = AutoConfig.from_pretrained(spec.name_or_path, revision=spec.revision).model_type
        except (OSError, ValueError) as err:
            raise ToolkitError(f"could not load a model config from {spec.name_or_path!r}: {first_line(err)}") from None
        what = f"{spec.name_or_path} is a {kind!r} model"
    else:
        kind, what = spec.model_type, f"model.model_type {spec.model_type!r} is"
    if kind in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
        return ENCODER_DECODER
    if is_decoder_only(kind):
        return DECODER_ONLY
    raise ToolkitError(f"{what} neither an encoder-decoder (t5, bart, marian) nor a decoder-only model (gpt2, llama);"
                       " set seq2seq.encoder to warm-start an encoder-decoder from it")


def build_seq2seq_model(recipe: Recipe, tokenizer, architecture: str, seed: int = 42):
    """The model sized to the tokenizer, its special ids and the recipe's generation settings set."""
    from transformers import AutoModelForSeq2SeqLM, EncoderDecoderModel, set_seed

    from toolkit.modeling import build_model, load_model_config, locate_pretrained

    set_seed(seed)
    spec, s2s = recipe.model, recipe.seq2seq
    if architecture == DECODER_ONLY:
        model = build_model(spec, load_model_config(spec), tokenizer, seed=seed)
    elif spec.name_or_path:
        model = AutoModelForSeq2SeqLM.from_pretrained(spec.name_or_path, revision=spec.revision)
    elif s2s.encoder:
        encoder = locate_pretrained(s2s.encoder)
        model = EncoderDecoderModel.from_encoder_decoder_pretrained(encoder, locate_pretrained(s2s.decoder or s2s.encoder))
    else:
        config = load_model_config(spec)
        config.vocab_size = len(tokenizer)
        model = AutoModelForSeq2SeqLM.from_config(config, attn_implementation=spec.attn_implementation)
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        if isinstance(model, EncoderDecoderModel):  # it refuses to resize itself; its two halves can
            model.encoder.resize_token_embeddings(len(tokenizer))
            model.decoder.resize_token_embeddings(len(tokenizer))
            model.config.decoder.vocab_size = len(tokenizer)
        else:
            model.resize_token_embeddings(len(tokenizer))
    configure_generation(model, tokenizer, s2s, architecture)
    return model


def configure_generation(model, tokenizer, spec: Seq2Seq, architecture: str) -> None:
    """The tokenizer's special ids and the recipe's generation settings, on the model and its generation config.
    Also applied to a reloaded run: an adapter folder comes back with its base's settings, not the run's."""
    start, eos, pad = special_ids(tokenizer)
    ids = {"eos_token_id": eos, "pad_token_id": pad}
    if architecture == ENCODER_DECODER:
        ids["decoder_start_token_id"] = start
        model.generation_config.bos_token_id = None  # the decoder start is set; no second forced token
    for config in (model.config, model.generation_config):
        for key, value in ids.items():
            setattr(config, key, value)
    model.generation_config.update(**generation_settings(spec))
    model.generation_config.max_length = None


def generation_settings(spec: Seq2Seq) -> dict:
    return {"num_beams": spec.num_beams, "max_new_tokens": spec.max_new_tokens, "length_penalty": spec.length_penalty,
            "no_repeat_ngram_size": spec.no_repeat_ngram_size, "early_stopping": spec.num_beams > 1,
            "do_sample": False}


def check_generation(spec: Seq2Seq) -> None:
    """Before any work: settings transformers would refuse when the model is saved, mid-run."""
    from transformers import GenerationConfig
    from transformers.utils import logging as hf_logging

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


def check_metrics(spec: Seq2Seq) -> list[str]:
    """The recipe's metric names, each known (did-you-mean otherwise), before any work."""
    from toolkit.metrics import path

    names = metric_names(spec)
    for name in names:
        path(name)
    return names


def samples(stats: dict):
    """A draw function for run.py: the first held-out sources, generated from, beside their references."""

    def draw(trainer, recipe: Recipe) -> list[dict]:
        from toolkit.training import is_sharded

        pairs = stats.get("samples", [])
        outputs = translate(trainer.model, trainer.processing_class, recipe.seq2seq, [p["source"] for p in pairs],
                            synced_gpus=is_sharded(trainer))
        return [{"prompt": p["source"], "completion": out, "reference": p["target"]} for p, out in zip(pairs, outputs)]

    return draw


def left_padded(rows: list[list[int]], pad: int, device=None):
    """Prompts aligned at their ends, as a decoder-only model continues them: (input_ids, attention_mask)."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    return ids, mask


def continue_prompts(model, rows: list[list[int]], pad: int, synced_gpus: bool = False):
    """What a decoder-only model generates after each prompt (the prompt itself cut off).

    `synced_gpus`: with sharded weights (FSDP, ZeRO-3) every process keeps stepping until all
    are done, or one that finished early would leave the others waiting in a gather.
    """
    ids, mask = left_padded(rows, pad, model.device)
    out = model.generate(input_ids=ids, attention_mask=mask, max_length=None, synced_gpus=synced_gpus)
    return out[:, ids.shape[1]:]


def translate(model, tokenizer, spec: Seq2Seq, sources: list[str], synced_gpus: bool = False) -> list[str]:
    """Generated outputs for a few sources (the card's samples), with the recipe's generation settings."""
    import torch

    if not sources:
        return []
    model_was_training = model.training
    model.eval()
    with torch.no_grad():
        if model.config.is_encoder_decoder:
            batch = tokenizer([spec.prefix + s for s in sources], return_tensors="pt", padding=True, truncation=True,
                              max_length=spec.max_source_length).to(model.device)
            out = model.generate(**batch, max_length=None, synced_gpus=synced_gpus)
        else:
            out = continue_prompts(model, encode_prompts(tokenizer, spec, sources), special_ids(tokenizer)[2],
                                   synced_gpus)
    model.train(model_was_training)
    return [t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True)]
