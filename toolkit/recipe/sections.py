"""The sections of a recipe every task shares, and the Recipe that holds them with its task's own section."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from toolkit.recipe.types import SECRET_KEYS


@dataclass
class Source:
    """One corpus: exactly one of `builtin`, `hub` or `files`."""

    builtin: str | None = None  # an offline corpus shipped with the toolkit, e.g. python-docs
    hub: str | None = None  # a `datasets.load_dataset` name
    config: str | None = None  # the Hub dataset's configuration name
    split: str = "train"
    revision: str | None = None
    files: str | list[str] | None = None  # paths or globs: txt, json, jsonl, csv, parquet
    text_column: str = "text"  # data.format text
    prompt_column: str = "prompt"  # data.format prompt_completion
    completion_column: str = "completion"
    messages_column: str = "messages"  # data.format chat: a list of {role, content}
    source_column: str = "source"  # seq2seq: the source sentence or document (WMT-style: translation.en)
    target_column: str = "target"  # seq2seq: the reference translation or summary (translation.de)
    weight: float = 1.0  # how many times each training document is seen (0.5: half of them)
    limit: int | None = None  # keep at most this many documents (quick looks, tests)
    encoding: str = "utf-8"  # of local txt, json(l) and csv files, e.g. latin-1, cp1252


@dataclass
class Cleaning:
    unicode_normalization: Literal["NFC", "NFKC", "NFD", "NFKD"] | None = "NFC"
    normalize_whitespace: bool = True  # drop control characters, collapse runs of blanks
    min_chars: int = 1
    max_chars: int | None = None
    deduplicate: bool = True  # exact duplicates, after the steps above
    # Off by default: a language model must learn to produce "the", "of" and "is";
    # removing them teaches it ungrammatical text and hides most of the real tokens.
    remove_stopwords: bool = False
    stopwords: list[str] | None = None  # None: the built-in English list


@dataclass
class Data:
    sources: list[Source] = field(default_factory=lambda: [Source(builtin="python-docs")])
    eval_fraction: float = 0.05  # held-out share of the documents, used when eval_sources is empty
    eval_sources: list[Source] = field(default_factory=list)
    block_size: int = 256  # plain text: the length of every packed row
    # Fine-tuning: what an example is, how long it may be, and what carries the loss.
    format: Literal["text", "prompt_completion", "chat"] = "text"
    max_length: int = 1024
    too_long: Literal["skip", "error"] = "skip"  # an example over max_length tokens
    completion_only_loss: bool = True  # loss on completion / assistant tokens only
    packing: bool = True  # many examples per row, position_ids restarting, no padding
    bad_rows: Literal["skip", "error"] = "skip"  # a chat row that is no conversation: skipped (counted), or stop
    cleaning: Cleaning = field(default_factory=Cleaning)
    cache_dir: str = "~/.cache/toolkit"
    num_proc: int | None = None
    # How long the other processes of a machine wait for its first one to prepare the data
    # (a tokenizer trained on gigabytes takes a while) before giving up with a message.
    wait_timeout: int = 3600
    # Streaming (pretraining text): read the corpus as it trains, tokenized and packed on the
    # fly, in memory that does not grow with the corpus; training is counted in max_steps.
    streaming: bool = False
    eval_documents: int = 1000  # streaming: held out from the head of the stream (without eval_sources)
    shuffle_buffer: int = 10000  # streaming: documents shuffled at a time

    @property
    def row_key(self) -> str:
        """The key that sets a training row's length: text is cut into blocks, examples stay whole."""
        return "block_size" if self.format == "text" else "max_length"

    @property
    def row_length(self) -> int:
        return getattr(self, self.row_key)


@dataclass
class Tokenizer:
    name_or_path: str | None = None  # pretrained tokenizer; None: the model's, or train a new one
    revision: str | None = None
    vocab_size: int = 8192  # for a newly trained byte-level BPE
    min_frequency: int = 2
    bos_token: str = "<|endoftext|>"
    eos_token: str = "<|endoftext|>"
    pad_token: str = "<|pad|>"
    training_documents: int = 100000  # with data.streaming: a new BPE learns from the stream's first documents

    @property
    def special_tokens(self) -> list[str]:
        return list(dict.fromkeys([self.bos_token, self.eos_token, self.pad_token]))

    @property
    def min_vocab_size(self) -> int:
        """A new byte-level BPE holds every byte and the special tokens before its first merge."""
        return 256 + len(self.special_tokens)


@dataclass
class Model:
    name_or_path: str | None = None  # pretrained weights: continued pretraining
    revision: str | None = None
    model_type: str = "llama"  # for a model built from a config: any type AutoConfig knows
    config: dict[str, Any] = field(default_factory=dict)  # overrides of the model config
    attn_implementation: str = "sdpa"
    # The loss without the whole logits tensor (toolkit/loss.py): decoder-only models (pretrain, finetune, seq2seq).
    # auto: on for vocabularies of FUSED_LOSS_MIN_VOCAB tokens or more, where the logits are the largest tensor.
    fused_cross_entropy: bool | Literal["auto"] = "auto"


@dataclass
class Lora:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"  # module names, or all-linear
    merge: bool = False  # also save the base with the adapter merged in, in output_dir/merged
    quantize_4bit: bool = False  # QLoRA: a 4-bit base (needs a CUDA GPU and bitsandbytes)


@dataclass
class Evaluation:
    before_training: bool = True  # measure init_eval_perplexity
    early_stopping_patience: int | None = None  # evaluations without improvement before stopping
    early_stopping_threshold: float = 0.0
    sample_prompts: list[str] = field(default_factory=lambda: ["The"])
    max_new_tokens: int = 40
    temperature: float = 0.8
    top_k: int = 50


@dataclass
class Hub:
    push: bool = False
    model_id: str | None = None  # namespace/name
    private: bool = True
    strategy: Literal["end", "every_save"] = "end"  # every_save: also push each checkpoint's model
    license: str = "apache-2.0"  # for the model card
    language: list[str] = field(default_factory=lambda: ["en"])
    token: str | None = None  # better: HF_TOKEN or `hf auth login`; never saved
    include_samples: bool = False  # also push samples, predictions and data stats, which hold text of the data


DEFAULT_TASK = "causal_lm"  # a recipe without `task:` trains a causal language model


@dataclass
class Recipe:
    """A whole recipe. `task` names the task (toolkit/tasks/); a task with a section of its own
    (seq2seq, qa) finds it under its name: `recipe.qa`, `recipe.seq2seq`."""

    task: str = DEFAULT_TASK
    model: Model = field(default_factory=Model)
    tokenizer: Tokenizer = field(default_factory=Tokenizer)
    data: Data = field(default_factory=Data)
    training: dict[str, Any] = field(default_factory=dict)
    lora: Lora = field(default_factory=Lora)
    evaluation: Evaluation = field(default_factory=Evaluation)
    hub: Hub = field(default_factory=Hub)
    section: Any = None  # the task's own section (a dataclass of the task package), or None
    path: str | None = field(default=None, compare=False)  # the file it came from
    # The `training:` section as the TrainingArguments of the recipe's task, built once when the
    # recipe is checked (load.py); every Trainer of the run takes these.
    arguments: Any = field(default=None, compare=False, repr=False)

    def __getattr__(self, name: str):
        # Only reached for names that are not fields: the task's section under the task's name.
        fields = self.__dict__
        if name == fields.get("task") and fields.get("section") is not None:
            return fields["section"]
        raise AttributeError(f"a {fields.get('task')} recipe has no section {name!r}")

    @property
    def seed(self) -> int:
        """The one seed of a run: data order, held-out split, initial weights, samples (defaults set it)."""
        return self.training["seed"]

    @property
    def output_dir(self) -> Path:
        return Path(self.training["output_dir"])

    def to_dict(self, secrets: bool = False) -> dict[str, Any]:
        """The resolved recipe as plain data, the task first and its section last; secrets left out unless asked for."""
        out = {"task": self.task}
        for f in dataclasses.fields(self):
            if f.name in ("task", "section", "path", "arguments"):
                continue
            value = getattr(self, f.name)
            value = dict(value) if isinstance(value, dict) else dataclasses.asdict(value)
            if not secrets:
                value = {k: v for k, v in value.items() if (f.name, k) not in SECRET_KEYS}
            out[f.name] = value
        if self.section is not None:
            out[self.task] = dataclasses.asdict(self.section)
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)
