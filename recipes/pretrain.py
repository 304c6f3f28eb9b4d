"""Pretrain a causal language model from one YAML recipe: from a config, or on from pretrained weights.

    accelerate launch recipes/pretrain.py [--config RECIPE.yaml] [section.key=value ...]

Recipe, data, tokenizer, model, train, evaluate, save: the stages of the causal_lm task
(toolkit/tasks/causal_lm/), walked in order.
"""

import sys
from pathlib import Path

# The checkout's root in place of recipes/ on the path: the toolkit imports without installing,
# and recipes/evaluate.py cannot shadow the `evaluate` library.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from toolkit.errors import exit_on_user_error  # noqa: E402
from toolkit.run import finish_run, start_run, train_and_evaluate  # noqa: E402
from toolkit.tasks import TASKS  # noqa: E402

DEFAULT_RECIPE = Path(__file__).parent / "pretrain" / "default.yaml"


@exit_on_user_error
def main(argv=None):
    # 1. Recipe: parsed and checked in full (model config, block size, data) before anything expensive;
    #    a finished run is left alone.
    run = start_run(argv, DEFAULT_RECIPE, TASKS, task="causal_lm")
    recipe, task = run.recipe, run.task
    if run.finished:
        return
    task.check(recipe)

    # 2. Data and tokenizer: built once, by the first process; the others read its cache. Pretrained
    #    weights (folder, Hub id, package: path, .gguf file) bring their tokenizer; else a BPE is trained.
    data = task.prepare_data(recipe, run.state)

    # 3. Model, sized to the tokenizer: from the config, or the pretrained weights to continue from.
    model = task.build_model(recipe, data)

    # 4. Train, with perplexity measured before and after.
    trainer = task.build_trainer(recipe, model, data)
    results = train_and_evaluate(trainer, recipe, task, data, run.resume_from)

    # 5. Save the model, tokenizer, metrics, samples, plots and card; push when the recipe asks.
    finish_run(trainer, recipe, task, data, results, run.started)


if __name__ == "__main__":
    main()
