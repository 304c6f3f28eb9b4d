"""Streaming pretraining data: a corpus read while it trains, in memory that does not grow with it.

The held-out documents (the head of the stream, or `data.eval_sources`) and the tokenizer
are prepared once and cached, as in the non-streaming path. Training documents are
cleaned, shuffled in a bounded buffer, tokenized and cut into EOS-joined blocks on the
fly. The stream never ends: pass after pass, each shuffled anew, so the Trainer sees one
epoch counted in `max_steps`, and a resumed run skips exactly the batches it trained on.
"""

from __future__ import annotations

import functools
import itertools
import logging

import torch
from datasets import Dataset, IterableDataset, interleave_datasets

from toolkit.data.clean import clean_corpus, document_cleaner, text_hash
from toolkit.data.packing import ids_encoder, pack, tokenize
from toolkit.data.sources import load_source, load_sources
from toolkit.errors import ToolkitError
from toolkit.recipe import Recipe

logger = logging.getLogger("toolkit")

TOKENIZE_BATCH = 256  # documents tokenized together: the fast tokenizer's batch call pays off from here


def _take(iterator, n: int) -> list:
    return list(itertools.islice(iterator, n))


def stream_documents(recipe: Recipe) -> IterableDataset:
    """The cleaned training corpus as a stream of `text`, sources mixed by weight."""
    data, seed = recipe.data, recipe.seed
    streams = [load_source(s, i, "text", streaming=True).remove_columns(["source"]) for i, s in enumerate(data.sources)]
    if len(streams) > 1:
        # Weights become sampling probabilities: a stream has no length to repeat documents against.
        total = sum(s.weight for s in data.sources)
        docs = interleave_datasets(streams, probabilities=[s.weight / total for s in data.sources], seed=seed,
                                   stopping_strategy="all_exhausted")
    else:
        docs = streams[0]
    clean = document_cleaner(data.cleaning)
    return docs.map(lambda b: {"text": [t for t in map(clean, b["text"]) if t is not None]}, batched=True)


def held_out_texts(recipe: Recipe) -> list[str]:
    """The evaluation documents: data.eval_sources, or the first data.eval_documents of the stream."""
    data = recipe.data
    if data.eval_sources:
        held_out, _ = clean_corpus(load_sources(data.eval_sources), data.cleaning)
        return held_out["text"]
    texts = [d["text"] for d in stream_documents(recipe).take(data.eval_documents)]
    if len(texts) < 2:
        raise ToolkitError(f"the stream holds {len(texts)} document(s) after cleaning, too few to hold any out;"
                           " loosen data.cleaning or add data.sources")
    return texts


def training_documents(recipe: Recipe) -> IterableDataset:
    """The stream minus its held-out head, and minus any text equal to a held-out one."""
    docs = stream_documents(recipe)
    if not recipe.data.eval_sources:
        docs = docs.skip(recipe.data.eval_documents)
    held_out = {text_hash(t) for t in held_out_texts(recipe)}  # bounded by the evaluation set
    return docs.filter(lambda b: [text_hash(t) not in held_out for t in b["text"]], batched=True)


def prepare_streaming(recipe: Recipe, tokenizer_from_texts) -> tuple[Dataset, object, dict]:
    """Held-out blocks, the tokenizer and their stats; training is read later, by `PackedStream`.

    `tokenizer_from_texts(texts, count)` trains or loads the tokenizer.
    """
    data = recipe.data
    texts = held_out_texts(recipe)
    sample = (d["text"] for d in training_documents(recipe).take(recipe.tokenizer.training_documents))
    tokenizer = tokenizer_from_texts(sample, recipe.tokenizer.training_documents)
    eval_ids = tokenize(Dataset.from_dict({"text": texts}), tokenizer)
    eval_blocks, _ = pack(eval_ids, data.block_size, keep_tail=True)
    stats = {"streaming": True, "eval_documents": len(texts), "eval_blocks": len(eval_blocks),
             "eval_tokens": sum(len(x) for x in eval_ids["input_ids"]), "block_size": data.block_size}
    logger.info("data: streaming; %d held-out documents in %d blocks; training text is read as it trains",
                len(texts), len(eval_blocks))
    return eval_blocks, tokenizer, stats


class PackedStream(torch.utils.data.IterableDataset):
    """Training blocks of `block_size` tokens, made on the fly from a document stream.

    Documents are joined as in `packing.tokenize` ([bos] + tokens + [eos]) and the token
    stream is cut into blocks across document and pass boundaries, so no token is padded
    or dropped. Each pass reshuffles (seed + pass). With DataLoader workers, each worker
    takes every n-th document, so none is read twice.
    """

    def __init__(self, documents: IterableDataset, tokenizer, block_size: int, seed: int, shuffle_buffer: int):
        self.documents, self.tokenizer, self.block_size = documents, tokenizer, block_size
        self.seed, self.shuffle_buffer = seed, shuffle_buffer

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        tok = self.tokenizer
        encode_ids = ids_encoder(tok)
        eos = [tok.eos_token_id]
        bos = [tok.bos_token_id] if tok.bos_token_id not in (None, tok.eos_token_id) else []
        shuffled = self.documents.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer)
        tokens: list[int] = []
        for epoch in itertools.count():
            shuffled.set_epoch(epoch)
            mine = itertools.islice(shuffled, worker, None, workers)
            read = 0
            for batch in iter(functools.partial(_take, mine, TOKENIZE_BATCH), []):
                read += len(batch)
                for ids in encode_ids([d["text"] for d in batch]):
                    tokens += bos + ids + eos
                while len(tokens) >= self.block_size:
                    yield {"input_ids": tokens[: self.block_size]}
                    tokens = tokens[self.block_size:]
            if read == 0:
                raise ToolkitError("the streamed training corpus is empty after holding out and cleaning;"
                                   " add data.sources or lower data.eval_documents")
