"""Fine-tune a pretrained causal language model, fully or with LoRA, from one YAML recipe.

    accelerate launch recipes/finetune.py [--config RECIPE.yaml] [section.key=value ...]

Recipe, base model, data, model (+ LoRA), train, evaluate, save: the stages of the
causal_lm task (toolkit/tasks/causal_lm/), walked in order.
"""

import sys
from pathlib import Path

# The checkout's root in place of recipes/ on the path: the toolkit imports without installing,
# and recipes/evaluate.py cannot shadow the `evaluate` library.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from toolkit.errors import ToolkitError, exit_on_user_error  # noqa: E402
from toolkit.run import finish_run, start_run, train_and_evaluate  # noqa: E402
from toolkit.tasks import TASKS  # noqa: E402

DEFAULT_RECIPE = Path(__file__).parent / "finetune" / "default.yaml"


@exit_on_user_error
def main(argv=None):
    # 1. Recipe, checked in full; a base model is required; a finished run is left alone.
    run = start_run(argv, DEFAULT_RECIPE, TASKS, task="causal_lm")
    recipe, task = run.recipe, run.task
    if not recipe.model.name_or_path:
        raise ToolkitError("fine-tuning needs a pretrained model: set model.name_or_path (folder, Hub id or .gguf file)")
    if run.finished:
        return
    task.check(recipe)

    # 2. Base model and data: a GGUF file is converted once to safetensors, on the main process;
    #    examples are encoded with its tokenizer (and chat template) and packed padding-free.
    data = task.prepare_data(recipe, run.state)

    # 3. Model: full fine-tuning, or LoRA adapters on a frozen (optionally 4-bit) base.
    model = task.build_model(recipe, data)

    # 4. Train, with perplexity and samples before and after.
    trainer = task.build_trainer(recipe, model, data)
    results = train_and_evaluate(trainer, recipe, task, data, run.resume_from)

    # 5. Save the adapter (and merged model) or the full model, metrics, samples, plots and card.
    finish_run(trainer, recipe, task, data, results, run.started)


if __name__ == "__main__":
    main()
