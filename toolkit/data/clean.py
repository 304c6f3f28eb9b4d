"""Text cleaning: each step switchable in the recipe, each reporting what it changed or removed."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Callable

from datasets import Dataset

from toolkit.recipe import Cleaning

# A short list of English function words, for the classic (and, for language models,
# harmful) stop-word removal step.
ENGLISH_STOPWORDS = sorted(set("""
a an the and or but nor so yet if then else than that this these those there here
is am are was were be been being have has had having do does did doing will would shall
should can could may might must of in on at by for with about against between into through
during before after above below to from up down out off over under again further once
i me my myself we our ours ourselves you your yours yourself yourselves he him his himself
she her hers herself it its itself they them their theirs themselves what which who whom
whose when where why how all any both each few more most other some such no not only own
same too very just also as until while because
""".split()))

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u200e\u200f\u2028\u2029\ufeff]")
_ODD_SPACES = re.compile(r"[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_INNER_BLANKS = re.compile(r"(?<=\S)[ \t]{2,}(?=\S)")
_TRAILING_BLANKS = re.compile(r"[ \t]+$", re.MULTILINE)
_BLANK_LINES = re.compile(r"\n{3,}")


def normalize_whitespace(text: str) -> str:
    """Drop control characters, unify line ends and odd spaces, collapse blank runs.

    Leading indentation is kept: code blocks in documentation depend on it.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _ODD_SPACES.sub(" ", text)
    text = _INNER_BLANKS.sub(" ", text)
    text = _TRAILING_BLANKS.sub("", text)
    text = _BLANK_LINES.sub("\n\n", text)
    return text.strip()


def stopword_pattern(words: list[str]) -> re.Pattern:
    alternatives = "|".join(sorted((re.escape(w) for w in words), key=len, reverse=True))
    return re.compile(rf"\b(?:{alternatives})\b[ \t]?", re.IGNORECASE)


def rewrites(cfg: Cleaning) -> list[tuple[str, Callable[[str], str]]]:
    """The enabled steps that rewrite a document, in order."""
    steps = []
    if cfg.unicode_normalization:
        form = cfg.unicode_normalization
        steps.append(("unicode_normalization", lambda t: unicodedata.normalize(form, t)))
    if cfg.normalize_whitespace:
        steps.append(("normalize_whitespace", normalize_whitespace))
    if cfg.remove_stopwords:
        pattern = stopword_pattern(cfg.stopwords or ENGLISH_STOPWORDS)
        steps.append(("remove_stopwords", lambda t: pattern.sub("", t).strip()))
    return steps


def filters(cfg: Cleaning) -> list[tuple[str, Callable[[str], bool]]]:
    """The enabled steps that keep or drop a document (after the rewrites), in order."""
    steps = []
    if cfg.min_chars > 0:
        steps.append(("min_chars", lambda t: len(t) >= cfg.min_chars))
    if cfg.max_chars is not None:
        steps.append(("max_chars", lambda t: len(t) <= cfg.max_chars))
    return steps


def document_cleaner(cfg: Cleaning) -> Callable[[str], str | None]:
    """Every step but deduplication, for one document at a time (streaming): the text, or None to drop it."""
    steps, tests = [fn for _, fn in rewrites(cfg)], [fn for _, fn in filters(cfg)]

    def clean(text: str) -> str | None:
        for fn in steps:
            text = fn(text)
        return text if all(test(text) for test in tests) else None

    return clean


def clean_corpus(ds: Dataset, cfg: Cleaning, num_proc: int | None = None) -> tuple[Dataset, dict]:
    """Run the enabled steps in order; return the cleaned dataset and per-step counts."""
    stats: dict[str, dict] = {"documents_in": len(ds)}

    def rewrite(name, fn, count_removed_words=None):
        def batch(b):
            out = [fn(t) for t in b["text"]]
            changed = [o != t for o, t in zip(out, b["text"])]
            removed = [len(t) - len(o) for o, t in zip(out, b["text"])]
            return {"text": out, "_changed": changed, "_removed": removed}

        nonlocal ds
        ds = ds.map(batch, batched=True, num_proc=num_proc, desc=f"cleaning: {name}")
        stats[name] = {
            "documents_changed": int(sum(ds["_changed"])),
            "characters_removed": int(sum(ds["_removed"])),
        }
        ds = ds.remove_columns(["_changed", "_removed"])

    def keep(name, predicate):
        nonlocal ds
        before = len(ds)
        ds = ds.filter(lambda b: [predicate(t) for t in b["text"]], batched=True, num_proc=num_proc, desc=f"cleaning: {name}")
        stats[name] = {"documents_removed": before - len(ds)}

    if "text" not in ds.column_names:  # pairs and conversations: only exact duplicates go
        cfg = Cleaning(unicode_normalization=None, normalize_whitespace=False, min_chars=0,
                       deduplicate=cfg.deduplicate)
    for name, fn in rewrites(cfg):
        rewrite(name, fn)
    for name, predicate in filters(cfg):
        keep(name, predicate)
    if cfg.deduplicate:
        before = len(ds)
        ds = deduplicate(ds, num_proc)
        stats["deduplicate"] = {"documents_removed": before - len(ds)}
    stats["documents_out"] = len(ds)
    return ds, stats


def text_hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def example_hashes(ds: Dataset, num_proc: int | None = None) -> list[str]:
    """One hash per row: of its text, or of the whole example (prompt and completion, messages)."""
    if len(ds) == 0:
        return []
    fields = [c for c in ds.column_names if c != "source"]

    def batch(b):
        if fields == ["text"]:
            return {"h": [text_hash(t) for t in b["text"]]}
        rows = zip(*(b[f] for f in fields))
        return {"h": [text_hash(json.dumps(r, sort_keys=True, ensure_ascii=False)) for r in rows]}

    return ds.map(batch, batched=True, num_proc=num_proc, remove_columns=ds.column_names, desc="hashing")["h"]


def deduplicate(ds: Dataset, num_proc: int | None = None) -> Dataset:
    """Keep the first copy of each exact text."""
    if len(ds) == 0:
        return ds
    seen, keep = set(), []
    for i, h in enumerate(example_hashes(ds, num_proc)):
        if h not in seen:
            seen.add(h)
            keep.append(i)
    return ds.select(keep) if len(keep) < len(ds) else ds


def drop_texts(ds: Dataset, hashes: set[str], num_proc: int | None = None) -> Dataset:
    """Drop every row whose text hashes into `hashes` (evaluation texts out of training)."""
    if len(ds) == 0 or not hashes:
        return ds
    keep = [i for i, h in enumerate(example_hashes(ds, num_proc)) if h not in hashes]
    return ds.select(keep) if len(keep) < len(ds) else ds


def log_stats(stats: dict, log) -> None:
    """One line per cleaning step, e.g. `deduplicate: removed 12 documents`."""
    for step, counts in stats.items():
        if isinstance(counts, dict):
            log(f"  {step}: " + ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in counts.items()))
    log(f"  documents: {stats['documents_in']:,} in, {stats['documents_out']:,} kept")
