"""Extractive question answering: an encoder with a span head, trained and scored on SQuAD-format data.

    accelerate launch recipes/qa.py [--config RECIPE.yaml] [section.key=value ...]

Recipe, tokenizer, data (windows over long contexts), model, train with exact match and F1
before and after, save: the stages of the qa task (toolkit/tasks/qa/), walked in order.
"""

import sys
from pathlib import Path

# The checkout's root in place of recipes/ on the path: the toolkit imports without installing,
# and recipes/evaluate.py cannot shadow the `evaluate` library.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from toolkit.errors import exit_on_user_error  # noqa: E402
from toolkit.run import finish_run, start_run, train_and_evaluate  # noqa: E402
from toolkit.tasks import TASKS  # noqa: E402

DEFAULT_RECIPE = Path(__file__).parent / "qa" / "default.yaml"


@exit_on_user_error
def main(argv=None):
    # 1. Recipe, checked in full with the qa section, the data's columns and the model (an encoder
    #    that has a span head, whose positions cover a window); a finished run is left alone.
    run = start_run(argv, DEFAULT_RECIPE, TASKS, task="qa")
    recipe, task = run.recipe, run.task
    if run.finished:
        return
    task.check(recipe)

    # 2. Tokenizer and data: SQuAD-format examples checked (answer_start), split by context, cut into windows.
    data = task.prepare_data(recipe, run.state)

    # 3. Model: pretrained encoder with a new span head (or one built from a config).
    model = task.build_model(recipe, data)

    # 4. Train, with exact match and F1 on the held-out questions before and after.
    trainer = task.build_trainer(recipe, model, data)
    results = train_and_evaluate(trainer, recipe, task, data, run.resume_from)

    # 5. Save the model, tokenizer, every answer, results, plots and card (eval_results.json last).
    finish_run(trainer, recipe, task, data, results, run.started)


if __name__ == "__main__":
    main()
