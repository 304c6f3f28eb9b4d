"""Translation and summarization: source/target pairs, an encoder-decoder model, generation-based scores.

Three ways to get the model: a config of any encoder-decoder type (t5, bart, marian, ...)
trained from scratch with a new tokenizer; pretrained encoder-decoder weights; or an
EncoderDecoderModel warm-started from a pretrained encoder (its copy becomes the decoder,
with cross-attention added). Scores (BLEU and chrF, or ROUGE) come from the toolkit's
offline metric modules, on text generated with the recipe's beam settings.
"""

from __future__ import annotations

import logging

from datasets import Dataset

from toolkit.errors import ToolkitError
from toolkit.recipe import Recipe, Seq2Seq

logger = logging.getLogger("toolkit")

DEFAULT_METRICS = {"translation": ["bleu", "chrf"], "summarization": ["rouge"]}


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


def load_seq2seq_tokenizer(name: str, revision: str | None = None):
    """A pretrained tokenizer as it is: a BERT-style one ends texts with [SEP], so no eos is added to it."""
    from transformers import AutoTokenizer

    from toolkit.errors import first_line
    from toolkit.recipe import Tokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name, revision=revision)
    except (OSError, ValueError) as err:
        raise ToolkitError(f"could not load tokenizer {name!r}: {first_line(err)}") from None
    if tok.eos_token is None and tok.sep_token is None:
        tok.eos_token = Tokenizer().eos_token
    if tok.pad_token is None:
        tok.pad_token = Tokenizer().pad_token
    return tok


def encode_pairs(ds: Dataset, tokenizer, spec: Seq2Seq, num_proc: int | None = None) -> Dataset:
    """input_ids from the (prefixed) source, labels from the target ending in end-of-sequence."""
    _, eos, _ = special_ids(tokenizer)

    def encode(batch):
        sources = tokenizer([spec.prefix + s for s in batch["source_text"]], truncation=True,
                            max_length=spec.max_source_length)["input_ids"]
        # A tokenizer without special tokens of its own (a new BPE) marks the source's end with eos.
        sources = [ids if ids and ids[-1] == eos else ids[: spec.max_source_length - 1] + [eos] for ids in sources]
        targets = tokenizer(batch["target_text"], add_special_tokens=False, truncation=True,
                            max_length=spec.max_target_length - 1)["input_ids"]
        return {"input_ids": sources, "attention_mask": [[1] * len(x) for x in sources],
                "labels": [t + [eos] for t in targets]}

    return ds.map(encode, batched=True, num_proc=num_proc, remove_columns=ds.column_names, desc="encoding pairs")


def build_seq2seq_model(recipe: Recipe, tokenizer, seed: int = 42):
    """An encoder-decoder model sized to the tokenizer, its special ids and generation settings set."""
    from transformers import AutoModelForSeq2SeqLM, EncoderDecoderModel, set_seed

    from toolkit.modeling import load_model_config, locate_pretrained

    set_seed(seed)
    spec, s2s = recipe.model, recipe.seq2seq
    start, eos, pad = special_ids(tokenizer)
    if spec.name_or_path:
        model = AutoModelForSeq2SeqLM.from_pretrained(locate_pretrained(spec.name_or_path), revision=spec.revision)
    elif s2s.encoder:
        encoder = locate_pretrained(s2s.encoder)
        model = EncoderDecoderModel.from_encoder_decoder_pretrained(encoder, locate_pretrained(s2s.decoder or s2s.encoder))
    else:
        from transformers.models.auto.modeling_auto import MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES

        if spec.model_type not in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
            raise ToolkitError(
                f"model.model_type {spec.model_type!r} is not an encoder-decoder; seq2seq needs one such as t5, bart"
                " or marian, or seq2seq.encoder (a pretrained encoder to warm-start from)"
            )
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
    for config in (model.config, model.generation_config):
        config.decoder_start_token_id, config.eos_token_id, config.pad_token_id = start, eos, pad
    model.generation_config.bos_token_id = None  # the decoder start is set above; no second forced token
    model.generation_config.update(num_beams=s2s.num_beams, max_new_tokens=s2s.max_new_tokens,
                                   length_penalty=s2s.length_penalty, no_repeat_ngram_size=s2s.no_repeat_ngram_size,
                                   early_stopping=s2s.num_beams > 1)
    model.generation_config.max_length = None
    return model


def check_seq2seq_model_type(recipe: Recipe) -> None:
    """Before any work: a pretrained model must be an encoder-decoder (a decoder-only one cannot translate here)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES

    from toolkit.modeling import locate_pretrained

    if recipe.model.name_or_path:
        where = locate_pretrained(recipe.model.name_or_path)
        kind = AutoConfig.from_pretrained(where, revision=recipe.model.revision).model_type
        if kind not in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
            raise ToolkitError(f"{recipe.model.name_or_path} is a {kind!r} model, not an encoder-decoder;"
                               " set seq2seq.encoder to warm-start one from it, or pick a t5/bart/marian model")


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
        pairs = stats.get("samples", [])
        outputs = translate(trainer.model, trainer.processing_class, recipe.seq2seq, [p["source"] for p in pairs])
        return [{"prompt": p["source"], "completion": out, "reference": p["target"]} for p, out in zip(pairs, outputs)]

    return draw


def translate(model, tokenizer, spec: Seq2Seq, sources: list[str]) -> list[str]:
    """Generated outputs for a few sources (the card's samples), with the recipe's generation settings."""
    import torch

    if not sources:
        return []
    model_was_training = model.training
    model.eval()
    batch = tokenizer([spec.prefix + s for s in sources], return_tensors="pt", padding=True, truncation=True,
                      max_length=spec.max_source_length).to(model.device)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=spec.max_new_tokens, max_length=None)
    model.train(model_was_training)
    return [t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True)]
