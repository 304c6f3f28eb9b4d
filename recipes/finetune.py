"""Fine-tune a pretrained causal language model, fully or with LoRA, from one YAML recipe.

    accelerate launch recipes/finetune.py [--config RECIPE.yaml] [section.key=value ...]

Recipe, base model, data, model (+ LoRA), train, evaluate, save: each stage lives in `toolkit/`.
"""

import dataclasses
import sys
from pathlib import Path

# The checkout's root in place of recipes/ on the path: the toolkit imports without installing,
# and recipes/evaluate.py cannot shadow the `evaluate` library.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from toolkit.data.prepare import check_data, prepare_finetuning_data  # noqa: E402
from toolkit.errors import ToolkitError, exit_on_user_error  # noqa: E402
from toolkit.modeling import (  # noqa: E402
    apply_lora, build_model, check_block_size, check_lora, load_model_config, locate_pretrained, quantization_config,
    resolve_pretrained,
)
from toolkit.run import finish_run, start_run, train_and_evaluate  # noqa: E402
from toolkit.tokenizer import load_pretrained_tokenizer  # noqa: E402
from toolkit.training import build_trainer  # noqa: E402

DEFAULT_RECIPE = Path(__file__).parent / "finetune" / "default.yaml"


@exit_on_user_error
def main(argv=None):
    # 1. Recipe, checked in full; a base model is required; a finished run is left alone.
    run = start_run(argv, DEFAULT_RECIPE)
    recipe = run.recipe
    if not recipe.model.name_or_path:
        raise ToolkitError("fine-tuning needs a pretrained model: set model.name_or_path (folder, Hub id or .gguf file)")
    if run.finished:
        return
    check_lora(recipe.lora)
    locate_pretrained(recipe.model.name_or_path)
    check_data(recipe)

    # 2. Base model: a GGUF file is converted once to safetensors, on the main process.
    with run.state.main_process_first():
        base = resolve_pretrained(recipe.model, recipe.data.cache_dir)
    model_config = load_model_config(base)
    check_block_size(model_config, recipe.data.row_length, f"data.{recipe.data.row_key}")
    name = recipe.tokenizer.name_or_path or base.name_or_path
    tokenizer = load_pretrained_tokenizer(name, recipe.tokenizer, recipe.tokenizer.revision or base.revision)

    # 3. Data: encoded with the model's tokenizer (and chat template), packed padding-free.
    data = prepare_finetuning_data(dataclasses.replace(recipe, model=base), tokenizer)

    # 4. Model: full fine-tuning, or LoRA adapters on a frozen (optionally 4-bit) base.
    model = build_model(base, model_config, data.tokenizer, seed=recipe.training["seed"],
                        quantization=quantization_config(recipe.lora))
    if recipe.lora.enabled:
        model = apply_lora(model, recipe.lora)

    # 5. Train, with perplexity and samples before and after.
    trainer = build_trainer(recipe, model, data.tokenizer, data.train, data.eval)
    results = train_and_evaluate(trainer, recipe, run.resume_from)

    # 6. Save the adapter (and merged model) or the full model, metrics, samples, plots and card.
    finish_run(trainer, recipe, data.stats, results, run.started)


if __name__ == "__main__":
    main()
