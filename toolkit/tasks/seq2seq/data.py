"""Seq2seq data: source/target pairs encoded for an encoder-decoder (source in, target out) or a
decoder-only model (prompt, then target, the loss on the target only), with their tokenizer
(pretrained, or a byte-level BPE trained on both sides), through the core's cache."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from datasets import Dataset

from toolkit.data.prepare import PreparedData, cached, split_corpus
from toolkit.errors import ToolkitError
from toolkit.loss import IGNORE
from toolkit.modeling import locate_pretrained
from toolkit.recipe import Model, Recipe
from toolkit.tasks.seq2seq.section import DECODER_ONLY, ENCODER_DECODER, Seq2Seq, prompt_template
from toolkit.tokenizer import bos_ids, load_pretrained_tokenizer, train_bpe

logger = logging.getLogger("toolkit")


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


@dataclass
class Seq2SeqData(PreparedData):
    """The encoded pairs, the model's kind they were encoded for, and the held-out sources (for predictions.jsonl)."""

    architecture: str = ENCODER_DECODER
    sources: list[str] = field(default_factory=list)


def prepare_seq2seq_data(recipe: Recipe, model: Model, architecture: str) -> Seq2SeqData:
    """Encoded source/target pairs and their tokenizer (pretrained, or a BPE trained on both sides), for
    `model` (the resolved model spec). `architecture`: encoder-decoder (source in, target out) or decoder-only
    (prompt, then target). The held-out sources are taken off the evaluation rows, which hold model inputs only."""
    data = cached(recipe, f"seq2seq-{architecture}", model, lambda: _build_seq2seq(recipe, model, architecture))
    sources = data.eval["source_text"]  # cached with their rows
    return Seq2SeqData(data.train, data.eval.remove_columns("source_text"), data.tokenizer, data.stats,
                       architecture=architecture, sources=sources)


def _build_seq2seq(recipe: Recipe, model: Model, architecture: str) -> PreparedData:
    s2s = recipe.seq2seq
    train, held_out, stats = split_corpus(recipe, "seq2seq")

    def both_sides(batch):
        return [bool(s.strip()) and bool(t.strip()) for s, t in zip(batch["source_text"], batch["target_text"])]

    kept_train, kept_eval = train.filter(both_sides, batched=True), held_out.filter(both_sides, batched=True)
    empty = {"train": len(train) - len(kept_train), "eval": len(held_out) - len(kept_eval)}
    train, held_out = kept_train, kept_eval
    if sum(empty.values()):
        logger.info("data: dropped %d pairs with an empty source or target", sum(empty.values()))
    stats["empty_pairs_dropped"] = empty
    if len(train) == 0 or len(held_out) == 0:
        raise ToolkitError("no source/target pairs left after dropping empty ones; check the data's columns")
    if s2s.eval_limit is not None and len(held_out) > s2s.eval_limit:
        held_out = held_out.select(range(s2s.eval_limit))  # scoring generates text: the slow part of a run
    name = recipe.tokenizer.name_or_path or model.name_or_path or s2s.encoder
    if name:
        tokenizer = load_pretrained_tokenizer(locate_pretrained(name), recipe.tokenizer, recipe.tokenizer.revision,
                                              sep_ends_text=True)
        stats["tokenizer"] = {"pretrained": name, "vocab_size": len(tokenizer)}
    else:
        texts = (t for b in _pair_batches(train) for t in b)
        tokenizer = train_bpe(texts, recipe.tokenizer, length=2 * len(train))
        stats["tokenizer"] = {"trained": "byte-level BPE on sources and targets", "vocab_size": len(tokenizer)}
    if architecture == DECODER_ONLY:
        # Prompts end where generation starts (training pads on the right, on its own). Set in
        # init_kwargs too, or save_pretrained would write the side the tokenizer was loaded with.
        tokenizer.padding_side = tokenizer.init_kwargs["padding_side"] = "left"
    stats["architecture"] = architecture
    stats["samples"] = [{"source": r["source_text"], "target": r["target_text"]} for r in held_out.select(range(min(3, len(held_out))))]
    encoded = {n: encode_pairs(part, tokenizer, s2s, architecture, recipe.data.num_proc)
               for n, part in (("train", train), ("eval", held_out))}
    # The held-out sources travel with their rows (cached with them) for predictions.jsonl.
    encoded["eval"] = encoded["eval"].add_column("source_text", held_out["source_text"])
    stats.update(train_pairs=len(encoded["train"]), eval_pairs=len(encoded["eval"]), from_cache=False)
    logger.info("data: %d training and %d held-out pairs", len(encoded["train"]), len(encoded["eval"]))
    return PreparedData(encoded["train"], encoded["eval"], tokenizer, stats)


def _pair_batches(ds: Dataset, size: int = 1000):
    for start in range(0, len(ds), size):
        rows = ds[start : start + size]
        yield rows["source_text"] + rows["target_text"]
