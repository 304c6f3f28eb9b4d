"""A causal LM's data: plain text packed into blocks (pretraining, continued pretraining), or
prompt/completion and chat examples encoded with the model's tokenizer (fine-tuning).

Blocks come with their tokenizer: the pretrained model's, or a byte-level BPE trained on the
training split. Both results go through the core's cache (toolkit/data/prepare.py).
"""

from __future__ import annotations

import logging

from datasets import Dataset

from toolkit.data.packing import count_tokens, pack, pack_examples, tokenize
from toolkit.data.prepare import PreparedData, cached, split_corpus
from toolkit.data.streaming import PackedStream, prepare_streaming, training_documents
from toolkit.errors import ToolkitError
from toolkit.recipe import Model, Recipe
from toolkit.tasks.causal_lm.encoding import encode_examples
from toolkit.tokenizer import load_pretrained_tokenizer, pretrained_tokenizer_name, train_bpe

logger = logging.getLogger("toolkit")


def prepare_pretraining_data(recipe: Recipe, model: Model) -> PreparedData:
    """Packed blocks and their tokenizer (the pretrained one of `model`, the resolved model spec, or a new
    BPE), from the cache or built and stored there.

    With data.streaming, only the held-out blocks and the tokenizer are cached; training
    blocks are made while training, from the stream (see streaming.py).
    """
    if not recipe.data.streaming:
        return cached(recipe, "pretraining", model, lambda: _build_pretraining(recipe, model))

    def build():
        found = {}
        eval_blocks, tokenizer, stats = prepare_streaming(
            recipe, lambda texts, count: _pretraining_tokenizer(recipe, model, texts, count, found))
        return PreparedData(None, eval_blocks, tokenizer, {**stats, **found, "from_cache": False})

    data = cached(recipe, "pretraining-stream", model, build)
    data.train = PackedStream(training_documents(recipe), data.tokenizer, recipe.data.block_size,
                              recipe.seed, recipe.data.shuffle_buffer)
    return data


def prepare_finetuning_data(recipe: Recipe, model: Model) -> PreparedData:
    """Encoded (and, by default, packed) prompt/completion or chat examples for the model's own tokenizer."""
    name, revision = pretrained_tokenizer_name(recipe.tokenizer, model)
    tokenizer = load_pretrained_tokenizer(name, recipe.tokenizer, recipe.tokenizer.revision or revision)
    return cached(recipe, "finetuning", model, lambda: _build_finetuning(recipe, tokenizer))


def _build_pretraining(recipe: Recipe, model: Model) -> PreparedData:
    data = recipe.data
    num_proc = data.num_proc
    train, held_out, stats = split_corpus(recipe)

    tokenizer = _pretraining_tokenizer(recipe, model, _batches(train), len(train), stats)
    train_ids = tokenize(train, tokenizer, num_proc)
    eval_ids = tokenize(held_out, tokenizer, num_proc)
    train_blocks, dropped = pack(train_ids, data.block_size)
    eval_blocks, _ = pack(eval_ids, data.block_size, keep_tail=True)
    train_tokens = count_tokens(train_ids)
    if len(train_blocks) == 0:
        raise ToolkitError(
            f"the training text has {train_tokens:,} tokens, less than one block of data.block_size={data.block_size};"
            " lower data.block_size or add data"
        )
    stats.update(
        train_tokens=train_tokens,
        eval_tokens=count_tokens(eval_ids),
        train_blocks=len(train_blocks),
        eval_blocks=len(eval_blocks),
        tokens_dropped=dropped,
        block_size=data.block_size,
        from_cache=False,
    )
    logger.info(
        "data: %s train tokens in %s blocks of %d (%s dropped at the end), %s eval tokens",
        f"{train_tokens:,}", f"{len(train_blocks):,}", data.block_size, f"{dropped:,}", f"{stats['eval_tokens']:,}",
    )
    return PreparedData(train_blocks, eval_blocks, tokenizer, stats)


def _pretraining_tokenizer(recipe: Recipe, model: Model, texts, count: int, stats: dict):
    """The recipe's pretrained tokenizer, or a byte-level BPE trained on `texts` (about `count` of them)."""
    name, revision = pretrained_tokenizer_name(recipe.tokenizer, model)
    if name:
        tokenizer = load_pretrained_tokenizer(name, recipe.tokenizer, revision)
        stats["tokenizer"] = {"pretrained": name, "vocab_size": len(tokenizer)}
    else:
        logger.info("tokenizer: training a byte-level BPE, vocab_size=%d, on %d documents", recipe.tokenizer.vocab_size, count)
        tokenizer = train_bpe(texts, recipe.tokenizer, length=count)
        stats["tokenizer"] = {"trained": "byte-level BPE", "vocab_size": len(tokenizer)}
    return tokenizer


def _batches(ds: Dataset, size: int = 1000):
    for start in range(0, len(ds), size):
        yield from ds[start : start + size]["text"]


def _build_finetuning(recipe: Recipe, tokenizer) -> PreparedData:
    """Pairs and chats, encoded per example (labels on what is learned), packed padding-free by default."""
    data = recipe.data
    train, held_out, stats = split_corpus(recipe, data.format)
    encoded = {}
    for name, part in (("train", train), ("eval", held_out)):
        encoded[name], stats[f"{name}_encoding"] = encode_examples(
            part, tokenizer, data.format, data.max_length, data.too_long, data.completion_only_loss, data.num_proc,
            data.bad_rows,
        )
        if len(encoded[name]) == 0:
            raise ToolkitError(f"no {name} example fits in data.max_length={data.max_length} tokens; raise it")
        if stats[f"{name}_encoding"].get("skipped_bad_rows"):
            logger.warning("data: skipped %d %s conversations the chat template refuses; set data.bad_rows=error to"
                           " stop on the first", stats[f"{name}_encoding"]["skipped_bad_rows"], name)
        if stats[f"{name}_encoding"]["skipped_too_long"]:
            logger.info("data: skipped %d %s examples longer than %d tokens",
                        stats[f"{name}_encoding"]["skipped_too_long"], name, data.max_length)
        if data.packing:
            encoded[name], stats[f"{name}_packing"] = pack_examples(encoded[name], data.max_length)
    if data.packing:
        p = stats["train_packing"]
        logger.info("data: packed %d examples into %d rows of up to %d tokens; packing efficiency %.1f%%"
                    " (real tokens / slots)", p["examples"], p["rows"], data.max_length, 100 * p["efficiency"])
    stats["from_cache"] = False
    return PreparedData(encoded["train"], encoded["eval"], tokenizer, stats)
