"""Preference tuning: DPO and its relatives (IPO, hinge, robust DPO, SimPO, ORPO) from one YAML recipe.

    accelerate launch recipes/preference.py [--config RECIPE.yaml] [section.key=value ...]

Recipe, base policy, pairs, model (+ LoRA), train with reward accuracy and margins on held-out
pairs before and after, save: the stages of the preference task (toolkit/tasks/preference/), in order.
"""

import sys
from pathlib import Path

# The checkout's root in place of recipes/ on the path: the toolkit imports without installing,
# and recipes/evaluate.py cannot shadow the `evaluate` library.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from toolkit.errors import exit_on_user_error
from toolkit.run import finish_run, start_run, train_and_evaluate
from toolkit.tasks import TASKS

DEFAULT_RECIPE = Path(__file__).parent / "preference" / "default.yaml"


@exit_on_user_error
def main(argv=None):
    # 1. Recipe, checked in full with the preference section (the method, its parameters, the reference)
    #    and the data's columns; a finished run is left alone.
    run = start_run(argv, DEFAULT_RECIPE, TASKS, task="preference")
    recipe, task = run.recipe, run.task
    if run.finished:
        return
    task.check(recipe)

    # 2. Base policy and pairs: a GGUF file is converted once; pairs are checked, held out by prompt,
    #    encoded with the policy's tokenizer and chat template.
    data = task.prepare_data(recipe, run.state)

    # 3. Policy: full fine-tuning, or LoRA adapters on a frozen base (which is then the reference).
    model = task.build_model(recipe, data)

    # 4. Train, with reward accuracy, rewards, margins and log-probs on held-out pairs before and after
    #    (the reference set up first: a frozen copy, the disabled adapter, or log-probs precomputed once).
    trainer = task.build_trainer(recipe, model, data)
    results = train_and_evaluate(trainer, recipe, task, data, run.resume_from)

    # 5. Save the adapter (and merged model) or the full model, metrics, samples, plots and card.
    finish_run(trainer, recipe, task, data, results, run.started)


if __name__ == "__main__":
    main()
