"""Cleaning: each step does its job, can be switched off, and reports what it did."""

from datasets import Dataset

from toolkit.data.clean import ENGLISH_STOPWORDS, clean_corpus, normalize_whitespace
from toolkit.recipe import Cleaning


def texts(ds):
    return list(ds["text"])


def test_unicode_normalization_composes_characters():
    ds = Dataset.from_dict({"text": ["cafe\u0301 au lait", "plain text"]})
    out, stats = clean_corpus(ds, Cleaning(unicode_normalization="NFC", normalize_whitespace=False, deduplicate=False))
    assert texts(out) == ["caf\u00e9 au lait", "plain text"]
    assert stats["unicode_normalization"]["documents_changed"] == 1


def test_nfkc_folds_compatibility_characters():
    out, _ = clean_corpus(Dataset.from_dict({"text": ["\ufb01le \u00bd"]}), Cleaning(unicode_normalization="NFKC"))
    assert texts(out) == ["file 1\u20442"]


def test_whitespace_drops_control_characters_and_keeps_indentation():
    raw = "def f():\r\n    return  1\x00\x07   \n\n\n\n\nnext\u00a0word\ufeff  "
    assert normalize_whitespace(raw) == "def f():\n    return 1\n\nnext word"


def test_length_filters_and_exact_deduplication_report_counts():
    ds = Dataset.from_dict({"text": ["short", "a long enough document", "a long enough document", "x" * 500, "another fine one"]})
    out, stats = clean_corpus(ds, Cleaning(min_chars=10, max_chars=100))
    assert texts(out) == ["a long enough document", "another fine one"]
    assert stats["min_chars"] == {"documents_removed": 1}
    assert stats["max_chars"] == {"documents_removed": 1}
    assert stats["deduplicate"] == {"documents_removed": 1}
    assert stats["documents_in"] == 5 and stats["documents_out"] == 2


def test_duplicates_that_differ_only_in_whitespace_are_caught_after_normalising():
    ds = Dataset.from_dict({"text": ["the same  text\n", "the same text"]})
    out, stats = clean_corpus(ds, Cleaning())
    assert texts(out) == ["the same text"]
    assert stats["deduplicate"]["documents_removed"] == 1


def test_every_step_can_be_switched_off():
    raw = ["  x\x00 ", "  x\x00 ", "cafe\u0301"]
    off = Cleaning(unicode_normalization=None, normalize_whitespace=False, min_chars=0, deduplicate=False)
    out, stats = clean_corpus(Dataset.from_dict({"text": raw}), off)
    assert texts(out) == raw
    assert set(stats) == {"documents_in", "documents_out"}


def test_stopwords_are_kept_by_default_and_removed_on_request():
    ds = Dataset.from_dict({"text": ["The cat is on the mat and it is happy"]})
    kept, stats = clean_corpus(ds, Cleaning())
    assert texts(kept) == ["The cat is on the mat and it is happy"]
    assert "remove_stopwords" not in stats
    removed, stats = clean_corpus(ds, Cleaning(remove_stopwords=True))
    assert texts(removed) == ["cat mat happy"]
    assert stats["remove_stopwords"]["documents_changed"] == 1
    assert {"the", "is", "on", "and", "it"} <= set(ENGLISH_STOPWORDS)


def test_custom_stopword_list():
    out, _ = clean_corpus(Dataset.from_dict({"text": ["foo bar baz"]}), Cleaning(remove_stopwords=True, stopwords=["bar"]))
    assert texts(out) == ["foo baz"]
