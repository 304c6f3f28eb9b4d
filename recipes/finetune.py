"""Fine-tune a pretrained causal language model, fully or with LoRA, from one YAML recipe.

    accelerate launch recipes/finetune.py [--config RECIPE.yaml] [section.key=value ...]

Recipe, base model, data, model (+ LoRA), train, evaluate, save: each stage lives in `toolkit/`.
"""

import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from toolkit.console import setup_logging  # noqa: E402
from toolkit.data.prepare import check_data, prepare_finetuning_data  # noqa: E402
from toolkit.errors import ToolkitError, exit_on_user_error  # noqa: E402
from toolkit.modeling import (  # noqa: E402
    apply_lora, build_model, check_lora, load_model_config, quantization_config, resolve_pretrained,
)
from toolkit.outputs import check_output_dir  # noqa: E402
from toolkit.recipe import load_recipe, parse_command_line  # noqa: E402
from toolkit.run import finish_run, train_and_evaluate  # noqa: E402
from toolkit.tokenizer import load_pretrained_tokenizer  # noqa: E402
from toolkit.training import build_trainer, init_processes  # noqa: E402

DEFAULT_RECIPE = Path(__file__).parent / "finetune" / "default.yaml"


@exit_on_user_error
def main(argv=None):
    started = time.time()
    state = init_processes()
    log = setup_logging(state.is_main_process)

    # 1. Recipe, checked in full; a base model is required.
    config, overrides = parse_command_line(sys.argv[1:] if argv is None else argv)
    recipe = load_recipe(config, overrides, default=DEFAULT_RECIPE)
    if not recipe.model.name_or_path:
        raise ToolkitError("fine-tuning needs a pretrained model: set model.name_or_path (folder, Hub id or .gguf file)")
    check_lora(recipe.lora)
    run_state = check_output_dir(recipe)
    if run_state.finished:
        return
    check_data(recipe)
    log.info("recipe: %s -> %s", recipe.path, recipe.output_dir)

    # 2. Base model: a GGUF file is converted once to safetensors, on the main process.
    with state.main_process_first():
        base = resolve_pretrained(recipe.model, recipe.data.cache_dir)
    model_config = load_model_config(base)
    name = recipe.tokenizer.name_or_path or base.name_or_path
    tokenizer = load_pretrained_tokenizer(name, recipe.tokenizer, recipe.tokenizer.revision or base.revision)

    # 3. Data: encoded with the model's tokenizer (and chat template), packed padding-free.
    recipe_for_data = dataclasses.replace(recipe, model=base)
    with state.main_process_first():
        data = prepare_finetuning_data(recipe_for_data, tokenizer)

    # 4. Model: full fine-tuning, or LoRA adapters on a frozen (optionally 4-bit) base.
    model = build_model(base, model_config, data.tokenizer, seed=recipe.training["seed"],
                        quantization=quantization_config(recipe.lora))
    if recipe.lora.enabled:
        model = apply_lora(model, recipe.lora)

    # 5. Train, with perplexity and samples before and after.
    trainer = build_trainer(recipe, model, data.tokenizer, data.train, data.eval)
    results = train_and_evaluate(trainer, recipe, run_state.resume_from)

    # 6. Save the adapter (and merged model) or the full model, tokenizer, metrics and samples.
    finish_run(trainer, recipe, data.stats, results, started)


if __name__ == "__main__":
    main()
