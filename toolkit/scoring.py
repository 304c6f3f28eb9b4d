"""Scoring outside training: predictions against references from files, and a saved model's perplexity.

The library behind `recipes/evaluate.py`. Text files are read the way the `sacrebleu`
command line reads them (one example per line, trailing whitespace dropped), so that
BLEU and chrF here equal its scores on the same files.
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from transformers import AutoConfig, AutoModelForCausalLM

from toolkit import metrics
from toolkit.data.packing import CausalCollator, pack, tokenize
from toolkit.data.sources import BUILTIN_CORPORA, GETTEXT_PREFIX, check_source, load_source
from toolkit.errors import ToolkitError, first_line
from toolkit.evaluation import token_nll
from toolkit.modeling import check_block_size, max_positions, resolve_pretrained
from toolkit.outputs import write_json
from toolkit.recipe import Model, Source, Tokenizer
from toolkit.tokenizer import decode_texts, load_pretrained_tokenizer

RESULTS_FILE = "eval_results.json"


# --------------------------------------------------------------------------- predictions and references


def read_lines(path: str | Path) -> list[str]:
    """One example per line, trailing whitespace dropped; only `\\n` ends a line, as in sacrebleu."""
    path = Path(os.path.expanduser(str(path)))
    if not path.is_file():
        raise ToolkitError(f"file not found: {path}")
    try:
        with open(path, encoding="utf-8", newline="\n") as f:
            return [line.rstrip() for line in f]
    except UnicodeDecodeError as err:
        raise ToolkitError(f"{path} is not UTF-8 text: {first_line(err)}") from None


def read_jsonl(path: str | Path, allow_lists: bool) -> list:
    """One JSON string per line, or (for references) a list of strings: the several references of an example."""
    items = []
    for number, line in enumerate(read_lines(path), 1):
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise ToolkitError(f"{path}, line {number}: not JSON ({first_line(err)})") from None
        is_list = isinstance(item, list) and all(isinstance(x, str) for x in item)
        if not (isinstance(item, str) or (allow_lists and is_list)):
            wanted = "a string or a list of strings" if allow_lists else "a string"
            raise ToolkitError(f"{path}, line {number}: expected {wanted}, got {type(item).__name__}")
        items.append(item)
    return items


def read_texts(path: str | Path, allow_lists: bool = False) -> list:
    return read_jsonl(path, allow_lists) if str(path).endswith(".jsonl") else read_lines(path)


def read_prediction_rows(path: str | Path, field: str = "prediction") -> tuple[list[str], list[list[str]]]:
    """A seq2seq run's predictions.jsonl: each row's `field` (prediction, or prediction_before) and reference."""
    predictions, references = [], []
    for number, line in enumerate(read_lines(path), 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ToolkitError(f"{path}, line {number}: not JSON ({first_line(err)})") from None
        if not isinstance(row, dict) or not isinstance(row.get("reference"), str) or not isinstance(row.get(field), str):
            raise ToolkitError(f"{path}, line {number}: expected an object with a text 'reference' and {field!r}"
                               " (the rows of a seq2seq run's predictions.jsonl)")
        predictions.append(row[field])
        references.append([row["reference"]])
    if not predictions:
        raise ToolkitError(f"{path} holds no predictions")
    return predictions, references


def read_pairs(predictions_path: str, reference_paths: list[str]) -> tuple[list[str], list[list[str]]]:
    """Predictions, and each example's references: from one file (JSONL lists allowed) or from
    several parallel files (line i of each is a reference of example i, as `sacrebleu REF1 REF2`)."""
    predictions = read_texts(predictions_path)
    columns = [read_texts(p, allow_lists=len(reference_paths) == 1) for p in reference_paths]
    for path, column in zip(reference_paths, columns):
        if len(column) != len(predictions):
            raise ToolkitError(f"{predictions_path} has {len(predictions)} predictions but {path} has {len(column)}"
                               " references; give one line per example in each file")
    references = [[r for col in columns for r in ([col[i]] if isinstance(col[i], str) else col[i])]
                  for i in range(len(predictions))]
    for number, refs in enumerate(references, 1):
        if not any(r.strip() for r in refs):
            where = reference_paths[0] if len(reference_paths) == 1 else ", ".join(reference_paths)
            raise ToolkitError(f"{where}, line {number}: empty reference; every example needs one")
    if not references:
        raise ToolkitError(f"{', '.join(reference_paths)} holds no references")
    return predictions, references


def score_texts(predictions: list[str], references: list, names: list[str], language: str | None = None) -> dict:
    """Every named text metric over the whole set; `language`: the texts' (BLEU's tokenizer, ROUGE's, SQuAD's)."""
    metrics.check_text_metrics(names)
    options = metrics.language_options(language)
    scores = {}
    for name in names:
        scores.update(metrics.load(name).compute(predictions=predictions, references=references,
                                                 **options.get(name, {})))
    return scores


class GenerationScores:
    """A Trainer `compute_metrics` for generated token ids: decoded, then scored against the decoded labels.

    `options`: each metric's own settings by name (BLEU's target language, ROUGE's language).
    Numbers only: the Trainer logs every value as a scalar, so the signatures (BLEU's, with its
    tokenizer) are kept aside in `signatures`, as are the texts of each evaluation, under
    `prefix` (the Trainer's metric_key_prefix, which the trainer sets before it evaluates), so a
    run can save them beside its scores and write every prediction it scored.
    """

    def __init__(self, tokenizer, names: list[str], options: dict[str, dict] | None = None,
                 sources: list[str] | None = None):
        self.tokenizer, self.options, self.sources = tokenizer, options or {}, sources
        self.scorers = {name: metrics.load(name) for name in names}  # one by one: each takes its own options
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.prefix, self.texts, self.signatures = "eval", {}, {}  # prefix -> (predictions, references); -> {key: text}

    def __call__(self, eval_pred) -> dict[str, float]:
        predictions, labels = eval_pred.predictions, eval_pred.label_ids
        if isinstance(predictions, tuple):
            predictions = predictions[0]
        # -100 marks positions without a label (and the Trainer pads generations with it): not tokens.
        predictions = np.where(predictions != -100, predictions, self.pad)
        labels = np.where(labels != -100, labels, self.pad)
        decoded, refs = decode_texts(self.tokenizer, predictions), decode_texts(self.tokenizer, labels)
        self.texts[self.prefix] = (decoded, refs)
        scores = {}
        for name, metric in self.scorers.items():
            scores.update(metric.compute(predictions=decoded, references=refs, **self.options.get(name, {})))
        self.signatures[self.prefix] = {k: v for k, v in scores.items() if k.endswith("_signature")}
        return {k: float(v) for k, v in scores.items() if isinstance(v, (int, float))}


    def rows(self) -> list[dict]:
        """Every scored example: its source (when known), the reference scored against, and the predictions
        of the evaluation before training (None when this process did not make one) and of the last one."""
        predictions, references = self.texts.get("eval", ([], []))
        before = self.texts.get("init_eval", (None, None))[0]
        sources = self.sources or [None] * len(predictions)
        return [{"source": s, "reference": r, "prediction_before": before[i] if before else None, "prediction": p}
                for i, (s, r, p) in enumerate(zip(sources, references, predictions))]


def generation_metrics(tokenizer, names: list[str], options: dict[str, dict] | None = None,
                       sources: list[str] | None = None) -> GenerationScores:
    return GenerationScores(tokenizer, names, options, sources)


# --------------------------------------------------------------------------- a causal LM's perplexity


def data_source(data: str, text_column: str = "text", limit: int | None = None):
    """A built-in corpus (by name) or data files (paths or globs), checked without reading them."""
    if data in BUILTIN_CORPORA or data.startswith(GETTEXT_PREFIX):
        return Source(builtin=data, limit=limit)
    if not glob.glob(os.path.expanduser(data)):
        raise ToolkitError(f"data not found: {data} is neither a file nor a built-in corpus ({', '.join(BUILTIN_CORPORA)})")
    source = Source(files=data, text_column=text_column, limit=limit)
    check_source(source)  # a supported format, one format per source
    return source


def load_texts(source) -> list[str]:
    """The documents of a source (txt: one document per file; json, jsonl, csv, parquet: one per record)."""
    texts = [t for t in load_source(source, 0)["text"] if t.strip()]
    if not texts:
        raise ToolkitError(f"{source.builtin or source.files} holds no text to score")
    return texts


def load_causal_lm(name: str, cache_dir: str, block_size: int | None = None):
    """A causal LM, its tokenizer and the row length to score with, from a folder, a Hub id,
    a package: path or a .gguf file (converted once into `cache_dir`)."""
    if name.startswith(("/", "./", "../", "~")) and not Path(name).expanduser().exists():
        raise ToolkitError(f"model not found: {name}")
    spec = resolve_pretrained(Model(name_or_path=name), cache_dir)
    try:
        config = AutoConfig.from_pretrained(spec.name_or_path)
    except (OSError, ValueError) as err:
        raise ToolkitError(f"could not load a model config from {name!r}: {first_line(err)}") from None
    limit, _ = max_positions(config)
    block_size = block_size or min(limit or 1024, 1024)
    check_block_size(config, block_size, name="--block_size")  # before the weights are read
    tokenizer = load_pretrained_tokenizer(spec.name_or_path, Tokenizer())
    try:
        model = AutoModelForCausalLM.from_pretrained(spec.name_or_path, config=config, dtype=torch.float32)
    except (OSError, ValueError) as err:
        raise ToolkitError(f"could not load a causal LM from {name!r}: {first_line(err)}") from None
    return model.to("cuda" if torch.cuda.is_available() else "cpu").eval(), tokenizer, block_size


def model_perplexity(model, tokenizer, texts: list[str], block_size: int, batch_size: int = 8) -> dict:
    """Token-weighted perplexity of `texts`: packed into rows as in pretraining, every token counted once."""
    rows, _ = pack(tokenize(Dataset.from_dict({"text": texts}), tokenizer), block_size, keep_tail=True)
    if len(rows) == 0:
        raise ToolkitError("the texts hold fewer than 2 tokens: nothing to predict")
    collate = CausalCollator(pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    metric = metrics.load("perplexity")
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = collate(rows.select(range(start, min(start + batch_size, len(rows)))).to_list())
            logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
            sums = token_nll(logits, batch["labels"]).cpu()
            metric.add_batch(nll_sum=sums[:, 0].tolist(), num_tokens=sums[:, 1].tolist())
    scores = metric.compute()
    # `loss` is the per-token mean, as in the pretraining recipe's results (not Trainer's mean of batch means).
    return {"perplexity": scores["perplexity"], "loss": scores["token_loss"], "tokens": scores["tokens"],
            "documents": len(texts), "block_size": block_size}


# --------------------------------------------------------------------------- results


def write_results(output_dir: str | Path, results: dict) -> Path:
    """`eval_results.json`, keys prefixed `eval_` as the Trainer and the pretraining recipe write them."""
    out = Path(os.path.expanduser(str(output_dir)))
    out.mkdir(parents=True, exist_ok=True)
    return write_json(out, RESULTS_FILE, {f"eval_{k}": v for k, v in results.items()})
