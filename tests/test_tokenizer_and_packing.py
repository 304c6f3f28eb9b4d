"""Tokenizer training and packing: EOS between documents, exact blocks, no padding, nothing lost."""

import torch
from datasets import Dataset
from transformers import AutoTokenizer

from toolkit.data.packing import CausalCollator, count_tokens, pack, tokenize
from toolkit.data.sources import python_docs
from toolkit.recipe import Tokenizer
from toolkit.tokenizer import load_pretrained_tokenizer, train_bpe


def small_bpe(vocab_size=500):
    docs = python_docs()["text"][:300]
    return train_bpe(iter(docs), Tokenizer(vocab_size=vocab_size), length=len(docs))


def test_trained_bpe_has_the_vocab_size_special_tokens_and_round_trips(tmp_path):
    tok = small_bpe(500)
    assert len(tok) == 500
    assert tok.eos_token == "<|endoftext|>" and tok.bos_token == "<|endoftext|>" and tok.pad_token == "<|pad|>"
    assert tok.pad_token_id != tok.eos_token_id
    text = "def parse(text):\n    return ast.literal_eval(text)  # é ✓"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text  # byte-level: nothing is unknown
    tok.save_pretrained(tmp_path / "tok")
    again = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert again(text)["input_ids"] == tok(text)["input_ids"]
    assert again.pad_token == "<|pad|>"


def test_pretrained_tokenizer_from_a_local_folder_gets_a_pad_token(tmp_path):
    tok = small_bpe(400)
    tok.pad_token = None
    tok.save_pretrained(tmp_path / "tok")
    loaded = load_pretrained_tokenizer(str(tmp_path / "tok"), Tokenizer())
    assert loaded.pad_token == "<|pad|>" and loaded.eos_token == "<|endoftext|>"


def test_documents_are_joined_with_eos_and_cut_into_full_blocks():
    tok = small_bpe(400)
    docs = ["alpha beta gamma " * 7, "one", "the import statement " * 11]
    ids = tokenize(Dataset.from_dict({"text": docs}), tok)
    eos = tok.eos_token_id
    expected = [t for d in docs for t in tok(d, add_special_tokens=False)["input_ids"] + [eos]]
    blocks, dropped = pack(ids, block_size=16)
    rows = blocks["input_ids"]
    assert all(len(r) == 16 for r in rows)  # no padding in training rows
    assert [t for r in rows for t in r] == expected[: len(rows) * 16]  # order kept, nothing invented
    assert dropped == len(expected) % 16 and count_tokens(ids) == len(expected)
    assert sum(r.count(eos) for r in rows) + expected[len(rows) * 16:].count(eos) == len(docs)


def test_evaluation_packing_keeps_the_tail():
    tok = small_bpe(400)
    ids = tokenize(Dataset.from_dict({"text": ["some words here " * 9]}), tok)
    total = count_tokens(ids)
    blocks, dropped = pack(ids, block_size=16, keep_tail=True)
    assert dropped == 0 and sum(len(r) for r in blocks["input_ids"]) == total


def test_collator_masks_padding_only_even_when_pad_is_eos():
    eos = 7
    collate = CausalCollator(pad_token_id=eos)  # pad id shared with EOS, as in many pretrained tokenizers
    batch = collate([{"input_ids": [1, 2, eos]}, {"input_ids": [3, eos, 4, 5, eos]}])
    assert batch["labels"].tolist() == [[1, 2, eos, -100, -100], [3, eos, 4, 5, eos]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["input_ids"].dtype == torch.long


def test_fast_id_encoding_equals_the_tokenizer_call():
    """tokenize() asks the Rust tokenizer for ids only; they must be the ids of a normal call."""
    from toolkit.data.packing import ids_encoder

    docs = python_docs()["text"]
    tok = small_bpe(600)
    sample = docs[::7] + ["", "  indented\n\ttabs", "naïve ünïcode — ✓"]
    assert ids_encoder(tok)(sample) == tok(sample, add_special_tokens=False)["input_ids"]
