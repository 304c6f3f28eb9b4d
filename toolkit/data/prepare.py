"""Data, start to finish: sources, cleaning, held-out split, weights, then the task's encoding.

Pretraining ends in packed blocks with a tokenizer (trained or pretrained); fine-tuning
ends in encoded examples (labels on what is learned), packed padding-free or not. Either
result is cached on disk under a key made of everything that shapes it (sources and their
file stamps, cleaning, split, tokenizer, lengths, seed), so a second run of the same
recipe, or the other processes of a distributed run, load it instead of redoing it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from datasets import Dataset, load_from_disk

from toolkit.data.clean import clean_corpus, drop_texts, example_hashes, log_stats
from toolkit.data.packing import count_tokens, pack, pack_examples, tokenize
from toolkit.data.tasks import encode_examples
from toolkit.data.sources import check_columns, check_source, load_sources, source_fingerprint
from toolkit.errors import ToolkitError
from toolkit.recipe import Recipe
from toolkit.tokenizer import load_pretrained_tokenizer, pretrained_tokenizer_name, train_bpe

logger = logging.getLogger("toolkit")

CACHE_FORMAT = 1  # bump when the cached layout or the pipeline's output changes


@dataclass
class PreparedData:
    train: Dataset
    eval: Dataset
    tokenizer: object
    stats: dict


def check_data(recipe: Recipe, fmt: str | None = None) -> None:
    """Cheap checks before any work: built-in names exist, files exist and hold the format's columns."""
    for source in recipe.data.sources + recipe.data.eval_sources:
        check_source(source)
        check_columns(source, fmt or recipe.data.format)


def cache_path(recipe: Recipe, task: str = "pretraining") -> Path:
    data, tok = recipe.data, recipe.tokenizer
    shaping = {k: v for k, v in asdict(data).items() if k not in ("sources", "eval_sources", "cache_dir", "num_proc")}
    spec = {
        "cache_format": CACHE_FORMAT,
        "task": task,
        "sources": [source_fingerprint(s) for s in data.sources],
        "eval_sources": [source_fingerprint(s) for s in data.eval_sources],
        "data": shaping,
        "tokenizer": asdict(tok),
        "tokenizer_from": _tokenizer_stamp(*pretrained_tokenizer_name(tok, recipe.model)),
        "seed": recipe.training.get("seed"),
        "tasks": {"seq2seq": asdict(recipe.seq2seq), "qa": asdict(recipe.qa)},  # prefixes, lengths, limits
    }
    key = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(os.path.expanduser(data.cache_dir)) / task / key


def _tokenizer_stamp(name: str | None, revision: str | None):
    """A pretrained tokenizer's identity: name and revision, plus file times for a local folder."""
    if name and Path(name).is_dir():
        weights = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
        files = sorted(p for p in Path(name).rglob("*") if p.is_file() and not p.name.endswith(weights))
        return [name, revision, [(p.name, p.stat().st_size, p.stat().st_mtime) for p in files]]
    return [name, revision]


def prepare_pretraining_data(recipe: Recipe) -> PreparedData:
    """Packed blocks and their tokenizer, from the cache or built and stored there.

    With data.streaming, only the held-out blocks and the tokenizer are cached; training
    blocks are made while training, from the stream (see streaming.py).
    """
    if not recipe.data.streaming:
        return _cached(recipe, "pretraining", lambda: _build_pretraining(recipe))
    from toolkit.data.streaming import PackedStream, prepare_streaming, training_documents

    def build():
        found = {}
        eval_blocks, tokenizer, stats = prepare_streaming(
            recipe, lambda texts, count: _pretraining_tokenizer(recipe, texts, count, found))
        return PreparedData(None, eval_blocks, tokenizer, {**stats, **found, "from_cache": False})

    data = _cached(recipe, "pretraining-stream", build)
    data.train = PackedStream(training_documents(recipe), data.tokenizer, recipe.data.block_size,
                              recipe.training.get("seed", 42), recipe.data.shuffle_buffer)
    return data


def prepare_finetuning_data(recipe: Recipe, tokenizer) -> PreparedData:
    """Encoded (and, by default, packed) examples for the model's own tokenizer."""
    return _cached(recipe, "finetuning", lambda: _build_finetuning(recipe, tokenizer))


def prepare_seq2seq_data(recipe: Recipe, architecture: str) -> PreparedData:
    """Encoded source/target pairs and their tokenizer (pretrained, or a BPE trained on both sides).
    `architecture`: encoder-decoder (source in, target out) or decoder-only (prompt, then target)."""
    return _cached(recipe, f"seq2seq-{architecture}", lambda: _build_seq2seq(recipe, architecture))


def _build_seq2seq(recipe: Recipe, architecture: str) -> PreparedData:
    from toolkit.modeling import locate_pretrained
    from toolkit.seq2seq import DECODER_ONLY, encode_pairs

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
    name = recipe.tokenizer.name_or_path or recipe.model.name_or_path or s2s.encoder
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
    encoded = {n: encode_pairs(part, tokenizer, s2s, architecture, recipe.data.num_proc) for n, part in (("train", train), ("eval", held_out))}
    stats.update(train_pairs=len(encoded["train"]), eval_pairs=len(encoded["eval"]), from_cache=False)
    logger.info("data: %d training and %d held-out pairs", len(encoded["train"]), len(encoded["eval"]))
    return PreparedData(encoded["train"], encoded["eval"], tokenizer, stats)


def _pair_batches(ds: Dataset, size: int = 1000):
    for start in range(0, len(ds), size):
        rows = ds[start : start + size]
        yield rows["source_text"] + rows["target_text"]


def _cached(recipe: Recipe, task: str, build) -> PreparedData:
    """Load the cache, or build it. In a multi-process run only each machine's first process
    builds; the others wait for its cache on disk rather than in a collective, which a long
    preparation (a tokenizer trained on gigabytes) would time out."""
    path = cache_path(recipe, task)
    if int(os.environ.get("LOCAL_RANK", "0")) != 0:
        _wait_for(path / "stats.json")
    if (path / "stats.json").is_file():
        return _load(path)
    built = build()
    _store(built, path)
    built.stats["cache"] = str(path)
    return built


def _wait_for(marker: Path, poll_seconds: float = 1.0) -> None:
    """Sleep until the first process has stored the data. If it fails instead, the launcher
    (torchrun, accelerate) ends this process along with it."""
    import time

    if not marker.is_file():
        logger.info("data: waiting for the first process to prepare %s", marker.parent)
    while not marker.is_file():
        time.sleep(poll_seconds)


def _load(path: Path) -> PreparedData:
    from transformers import AutoTokenizer

    stats = json.loads((path / "stats.json").read_text())
    stats.update(from_cache=True, cache=str(path))
    train = load_from_disk(str(path / "train")) if (path / "train").is_dir() else None  # None: streamed
    logger.info("data: loaded from cache %s (%s training rows)", path, f"{len(train):,}" if train else "streamed")
    return PreparedData(
        train=train,
        eval=load_from_disk(str(path / "eval")),
        tokenizer=AutoTokenizer.from_pretrained(str(path / "tokenizer")),
        stats=stats,
    )


def _store(data: PreparedData, path: Path) -> None:
    """Write to a temporary folder, then rename: a killed run never leaves a half cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=".tmp-"))
    try:
        if data.train is not None:
            data.train.save_to_disk(str(tmp / "train"))
        data.eval.save_to_disk(str(tmp / "eval"))
        data.tokenizer.save_pretrained(str(tmp / "tokenizer"))
        (tmp / "stats.json").write_text(json.dumps(data.stats, indent=2))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def split_corpus(recipe: Recipe, fmt: str = "text") -> tuple[Dataset, Dataset, dict]:
    """Load, clean, hold out and weight: (train, held_out, stats), documents or examples."""
    data, seed = recipe.data, recipe.training.get("seed", 42)
    num_proc = data.num_proc
    logger.info("data: loading %d source(s)", len(data.sources))
    corpus = load_sources(data.sources, fmt)
    corpus, cleaning = clean_corpus(corpus, data.cleaning, num_proc)
    logger.info("data: cleaning")
    log_stats(cleaning, logger.info)
    stats = {"cleaning": cleaning}

    if data.eval_sources:
        held_out = load_sources(data.eval_sources, fmt)
        held_out, stats["eval_cleaning"] = clean_corpus(held_out, data.cleaning, num_proc)
        train = corpus
    else:
        if len(corpus) < 2:
            raise ToolkitError(
                f"dataset empty after cleaning: {len(corpus)} of {cleaning['documents_in']:,} documents left"
                " (need at least 2 to hold one out); loosen data.cleaning or add data.sources"
            )
        n_eval = max(1, round(len(corpus) * data.eval_fraction))
        split = corpus.train_test_split(test_size=n_eval, seed=seed)
        train, held_out = split["train"], split["test"]
    # Decontaminate: no evaluation text may also be a training text (even with dedup off).
    before = len(train)
    train = drop_texts(train, set(example_hashes(held_out, num_proc)), num_proc)
    stats["removed_as_eval_duplicates"] = before - len(train)
    if len(train) == 0 or len(held_out) == 0:
        side = "training" if len(train) == 0 else "evaluation"
        raise ToolkitError(f"dataset empty after cleaning: no {side} documents left; loosen data.cleaning or add data.sources")

    train = apply_weights(train, [s.weight for s in data.sources], seed)
    stats["documents"] = {
        "train": len(train),
        "eval": len(held_out),
        "train_per_source": np.bincount(train["source"], minlength=len(data.sources)).tolist(),
    }
    return train, held_out, stats


def _build_pretraining(recipe: Recipe) -> PreparedData:
    data = recipe.data
    num_proc = data.num_proc
    train, held_out, stats = split_corpus(recipe)

    tokenizer = _pretraining_tokenizer(recipe, _batches(train), len(train), stats)
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


def _pretraining_tokenizer(recipe: Recipe, texts, count: int, stats: dict):
    """The recipe's pretrained tokenizer, or a byte-level BPE trained on `texts` (about `count` of them)."""
    name, revision = pretrained_tokenizer_name(recipe.tokenizer, recipe.model)
    if name:
        tokenizer = load_pretrained_tokenizer(name, recipe.tokenizer, revision)
        stats["tokenizer"] = {"pretrained": name, "vocab_size": len(tokenizer)}
    else:
        logger.info("tokenizer: training a byte-level BPE, vocab_size=%d, on %d documents", recipe.tokenizer.vocab_size, count)
        tokenizer = train_bpe(texts, recipe.tokenizer, length=count)
        stats["tokenizer"] = {"trained": "byte-level BPE", "vocab_size": len(tokenizer)}
    return tokenizer


def apply_weights(ds: Dataset, weights: list[float], seed: int) -> Dataset:
    """Weight w: every document w times (fractions take a seeded random share); then shuffle."""
    rng = np.random.default_rng(seed)
    source = np.asarray(ds["source"])
    picks = []
    for i, w in enumerate(weights):
        idx = np.flatnonzero(source == i)
        whole, frac = int(w), w - int(w)
        picks += [idx] * whole
        picks.append(rng.permutation(idx)[: round(frac * len(idx))])
    order = np.concatenate(picks) if picks else np.array([], dtype=int)
    return ds.select(rng.permutation(order))


def _batches(ds: Dataset, size: int = 1000):
    for start in range(0, len(ds), size):
        yield from ds[start : start + size]["text"]


def _build_finetuning(recipe: Recipe, tokenizer) -> PreparedData:
    """Plain text is packed into blocks as in pretraining; pairs and chats are encoded per example."""
    data = recipe.data
    if data.format == "text":
        train, held_out, stats = split_corpus(recipe)
        blocks = [pack(tokenize(part, tokenizer, data.num_proc), data.block_size, keep_tail=keep)
                  for part, keep in ((train, False), (held_out, True))]
        stats.update(train_blocks=len(blocks[0][0]), eval_blocks=len(blocks[1][0]), block_size=data.block_size)
        return PreparedData(blocks[0][0], blocks[1][0], tokenizer, {**stats, "from_cache": False})
    train, held_out, stats = split_corpus(recipe, data.format)
    encoded = {}
    for name, part in (("train", train), ("eval", held_out)):
        encoded[name], stats[f"{name}_encoding"] = encode_examples(
            part, tokenizer, data.format, data.max_length, data.too_long, data.completion_only_loss, data.num_proc
        )
        if len(encoded[name]) == 0:
            raise ToolkitError(f"no {name} example fits in data.max_length={data.max_length} tokens; raise it")
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
