"""Translation and summarization from one YAML recipe, scored with BLEU and chrF or ROUGE.

    accelerate launch recipes/seq2seq.py [--config RECIPE.yaml] [section.key=value ...]

The default recipe translates English to German (a small T5 trained from scratch on the
gettext catalogs of this machine); recipes/seq2seq/summarization.yaml summarizes
standard-library docstrings with an encoder-decoder warm-started from MiniLM. The stages
are the seq2seq task's (toolkit/tasks/seq2seq/), walked in order.
"""

import sys
from pathlib import Path

# The checkout's root in place of recipes/ on the path: the toolkit imports without installing,
# and recipes/evaluate.py cannot shadow the `evaluate` library.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from toolkit.errors import exit_on_user_error  # noqa: E402
from toolkit.run import finish_run, start_run, train_and_evaluate  # noqa: E402
from toolkit.tasks import TASKS  # noqa: E402

DEFAULT_RECIPE = Path(__file__).parent / "seq2seq" / "translation.yaml"


@exit_on_user_error
def main(argv=None):
    # 1. Recipe, checked in full: the data's columns, the metrics, the generation settings, the
    #    model's kind (encoder-decoder, or decoder-only with its prompt) before any work.
    run = start_run(argv, DEFAULT_RECIPE, TASKS, task="seq2seq")
    recipe, task = run.recipe, run.task
    if run.finished:
        return
    task.check(recipe)

    # 2. Pairs and tokenizer: built once, by the first process; the others read its cache.
    data = task.prepare_data(recipe, run.state)

    # 3. Model: from a config, pretrained, or warm-started from a pretrained encoder; LoRA on top if asked.
    model = task.build_model(recipe, data)

    # 4. Train, with generated text scored before and after.
    trainer = task.build_trainer(recipe, model, data)
    results = train_and_evaluate(trainer, recipe, task, data, run.resume_from)

    # 5. Save the model, tokenizer, scores, samples, plots and card.
    finish_run(trainer, recipe, task, data, results, run.started)


if __name__ == "__main__":
    main()
