"""Data, the part every task shares: sources checked, loaded, cleaned, held out and weighted; then the cache.

A task encodes what split_corpus gives (toolkit/tasks/*/data.py) and hands a build
function to `cached`: the result is stored on disk under a key made of everything that
shapes it (sources and their file stamps, cleaning, split, tokenizer, seed, and the task's
own section), so a second run of the same recipe, or the other processes of a distributed
run, load it instead of redoing it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from datasets import Dataset, load_from_disk
from transformers import AutoTokenizer

from toolkit.data.clean import clean_corpus, drop_texts, example_hashes, log_stats
from toolkit.data.sources import check_columns, check_source, load_sources, source_fingerprint
from toolkit.errors import ToolkitError
from toolkit.recipe import Model, Recipe
from toolkit.tokenizer import pretrained_tokenizer_name

logger = logging.getLogger("toolkit")

CACHE_FORMAT = 1  # bump when the cached layout or the pipeline's output changes


@dataclass
class PreparedData:
    """What a task's data stage gives the later stages: the training and held-out sets, the
    tokenizer and the counts of every data step (data_stats.json). A task that hands on more
    subclasses it with named fields (seq2seq's held-out sources, QA's examples and windows)."""

    train: Dataset | None  # None: streamed, made while training
    eval: Dataset
    tokenizer: object
    stats: dict


def check_data(recipe: Recipe, fmt: str | None = None) -> None:
    """Cheap checks before any work: built-in names exist, files exist and hold the format's columns."""
    for section in ("sources", "eval_sources"):
        for i, source in enumerate(getattr(recipe.data, section)):
            check_source(source, f"data.{section}[{i}]")
            check_columns(source, fmt or recipe.data.format)


def cache_path(recipe: Recipe, kind: str, model: Model) -> Path:
    """Where the data of `kind` (pretraining, finetuning, seq2seq-decoder-only, ...) for this recipe is cached,
    encoded for `model` (the resolved model spec, whose tokenizer it may use). The recipe's own task section
    counts; no other task's does."""
    data, tok = recipe.data, recipe.tokenizer
    shaping = {k: v for k, v in asdict(data).items()  # bad_rows: data that loads at all is the same either way
               if k not in ("sources", "eval_sources", "cache_dir", "num_proc", "wait_timeout", "bad_rows")}
    spec = {
        "cache_format": CACHE_FORMAT,
        "kind": kind,
        "task": recipe.task,
        "section": asdict(recipe.section) if recipe.section is not None else None,  # prefixes, lengths, limits
        "sources": [source_fingerprint(s) for s in data.sources],
        "eval_sources": [source_fingerprint(s) for s in data.eval_sources],
        "data": shaping,
        "tokenizer": asdict(tok),
        "tokenizer_from": _tokenizer_stamp(*pretrained_tokenizer_name(tok, model)),
        "seed": recipe.seed,
    }
    key = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(os.path.expanduser(data.cache_dir)) / kind / key


def _tokenizer_stamp(name: str | None, revision: str | None):
    """A pretrained tokenizer's identity: name and revision, plus file times for a local folder."""
    if name and Path(name).is_dir():
        weights = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
        files = sorted(p for p in Path(name).rglob("*") if p.is_file() and not p.name.endswith(weights))
        return [name, revision, [(p.name, p.stat().st_size, p.stat().st_mtime) for p in files]]
    return [name, revision]


def cached(recipe: Recipe, kind: str, model: Model, build) -> PreparedData:
    """Load the cache, or build it. In a multi-process run only each machine's first process
    builds; the others wait for its cache on disk rather than in a collective, which a long
    preparation (a tokenizer trained on gigabytes) would time out."""
    path = cache_path(recipe, kind, model)
    if int(os.environ.get("LOCAL_RANK", "0")) != 0:
        _wait_for(path / "stats.json", recipe.data.wait_timeout)
    if (path / "stats.json").is_file():
        return _load(path)
    built = build()
    if not _store(built, path):
        logger.info("data: another run stored the same data in %s first; using it", path)
    built.stats["cache"] = str(path)
    return built


def _wait_for(marker: Path, timeout: float) -> None:
    """Sleep until the first process has stored the data (see wait_on_disk)."""
    if not marker.is_file():
        logger.info("data: waiting for the first process to prepare %s", marker.parent)
    wait_on_disk(marker.is_file, timeout,
                 f"for this machine's first process to prepare the data cache {marker.parent}, and it is not there:"
                 " see that process's log (did it fail?); for a longer preparation raise data.wait_timeout")


def wait_on_disk(done, timeout: float, failure: str, poll_seconds: float = 1.0) -> None:
    """Poll the disk until `done()`, as a process waits for another's cache rather than in a collective (which a
    long preparation would time out); after `timeout` seconds (the other failed, or was killed where no launcher
    ends this process along with it) one line: "waited N s `failure`"."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise ToolkitError(f"waited {timeout:g} s {failure}")
        time.sleep(poll_seconds)


def _load(path: Path) -> PreparedData:
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


def _store(data: PreparedData, path: Path) -> bool:
    """Write to a temporary folder of a unique name, then rename it into place in one step: a
    killed run never leaves a half cache, and of two runs that build the same cache at once
    (a shared data.cache_dir) the first rename wins and the other's identical copy is dropped.
    Returns whether this copy was the one kept."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=".tmp-"))
    try:
        if data.train is not None:
            data.train.save_to_disk(str(tmp / "train"))
        data.eval.save_to_disk(str(tmp / "eval"))
        data.tokenizer.save_pretrained(str(tmp / "tokenizer"))
        (tmp / "stats.json").write_text(json.dumps(data.stats, indent=2))
        if path.exists() and not (path / "stats.json").is_file():
            # A cache of an older toolkit, torn: renamed aside first, so that no reader sees it half removed.
            aside = Path(tempfile.mkdtemp(dir=path.parent, prefix=".old-"))
            os.replace(path, aside / "cache")
            shutil.rmtree(aside, ignore_errors=True)
        try:
            os.rename(tmp, path)  # fails, never merges, where the folder exists
        except OSError:
            if (path / "stats.json").is_file():
                return False
            raise
        return True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def split_corpus(recipe: Recipe, fmt: str = "text") -> tuple[Dataset, Dataset, dict]:
    """Load, clean, hold out and weight: (train, held_out, stats), documents or examples."""
    data, seed = recipe.data, recipe.seed
    num_proc = data.num_proc
    logger.info("data: loading %d source(s)", len(data.sources))
    bad = {}  # chat rows that are no conversation, skipped (data.bad_rows)
    corpus = load_sources(data.sources, fmt, data.bad_rows, bad)
    held_out = load_sources(data.eval_sources, fmt, data.bad_rows, bad, "eval_sources") if data.eval_sources else None
    if bad and not len(corpus):
        raise ToolkitError(f"every one of the {bad['skipped_bad_rows']:,} chat rows is no conversation and was skipped"
                           f" (the first: {bad['first_bad_row']}); fix the rows")
    if bad:
        logger.warning("data: %d chat rows skipped, no conversation (the first: %s); set data.bad_rows=error to stop"
                       " on such rows", bad["skipped_bad_rows"], bad["first_bad_row"])
    corpus, cleaning = clean_corpus(corpus, data.cleaning, num_proc)
    logger.info("data: cleaning")
    log_stats(cleaning, logger.info)
    stats = {"cleaning": cleaning}
    if fmt == "chat":
        stats["skipped_bad_rows"] = bad.get("skipped_bad_rows", 0)

    if data.eval_sources:
        held_out, stats["eval_cleaning"] = clean_corpus(held_out, data.cleaning, num_proc)
        train = corpus
    else:
        if len(corpus) < 2:
            raise ToolkitError(
                f"dataset empty after cleaning: {len(corpus)} of {cleaning['documents_in']:,} documents left"
                " (need at least 2 to hold one out); loosen data.cleaning or add data.sources"
            )
        train, held_out = hold_out(corpus, data.eval_fraction, fmt, seed, stats)
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


def hold_out(corpus: Dataset, fraction: float, fmt: str, seed: int, stats: dict) -> tuple[Dataset, Dataset]:
    """(train, held_out): a seeded random `fraction` of the documents; or, for text with fewer documents
    than 1/fraction (3 files at 10%: one whole file would be 33%), the last `fraction` of each document."""
    n = len(corpus)
    if fmt == "text" and n * fraction < 1:
        cuts = [_cut(text, fraction) for text in corpus["text"]]
        sources = corpus["source"]
        train = Dataset.from_dict({"text": [h for h, _ in cuts], "source": sources})
        tails = [(t, s) for (_, t), s in zip(cuts, sources) if t]
        held = Dataset.from_dict({"text": [t for t, _ in tails], "source": [s for _, s in tails]}, features=train.features)
        characters = {"train": sum(map(len, train["text"])), "eval": sum(map(len, held["text"]))}
        stats["held_out"] = {"by": "the last eval_fraction of each document's text", "characters": characters}
        logger.info("data: %d documents are too few to hold out %g of them whole; the last %.0f%% of each document's"
                    " text is held out instead", n, fraction, 100 * fraction)
        return train, held
    n_eval = max(1, round(n * fraction))
    if n_eval >= n:
        raise ToolkitError(f"data.eval_fraction={fraction:g} of the {n:,} documents left after cleaning holds out"
                           f" {n_eval:,}, leaving none to train on; lower data.eval_fraction (0.05 to 0.2 is usual),"
                           " add data, or list data.eval_sources")
    if n * fraction < 0.5:
        logger.warning("data: %d examples are too few to hold out %g of them: 1 (%.0f%%) is held out; add examples or"
                       " list data.eval_sources", n, fraction, 100 / n)
    split = corpus.train_test_split(test_size=n_eval, seed=seed)
    return split["train"], split["test"]


def _cut(text: str, fraction: float) -> tuple[str, str]:
    """`text` in two, the second about `fraction` of it, cut at the line break (else the space) nearest that point."""
    at = round(len(text) * (1 - fraction))
    for sep in ("\n", " "):
        near = [i for i in (text.rfind(sep, 0, at), text.find(sep, at)) if i > 0]
        if near:
            at = min(near, key=lambda i: abs(i - at))
            break
    head, tail = text[:at].rstrip(), text[at:].strip()
    return (head, tail) if head and tail else (text, "")


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


