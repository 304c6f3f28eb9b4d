"""Extractive question answering: an encoder with a span head, trained and scored on SQuAD-format data.

    accelerate launch recipes/qa.py [--config RECIPE.yaml] [section.key=value ...]

Recipe, model config, tokenizer, data (windows over long contexts), model, train with exact
match and F1 before and after, save: each stage lives in `toolkit/` (mostly toolkit/qa.py).
"""

import dataclasses
import sys
from pathlib import Path

# The checkout's root in place of recipes/ on the path: the toolkit imports without installing,
# and recipes/evaluate.py cannot shadow the `evaluate` library.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from toolkit.errors import ToolkitError, exit_on_user_error  # noqa: E402
from toolkit.modeling import check_block_size, load_model_config, locate_pretrained  # noqa: E402
from toolkit.qa import (  # noqa: E402
    answers, build_qa_model, build_qa_trainer, check_qa_model, check_qa_recipe, load_qa_tokenizer, prepare_qa_data,
    write_predictions,
)
from toolkit.run import finish_run, start_run, train_and_evaluate  # noqa: E402

DEFAULT_RECIPE = Path(__file__).parent / "qa" / "default.yaml"


@exit_on_user_error
def main(argv=None):
    # 1. Recipe, checked in full with the qa section and the data's columns; a finished run is left alone.
    run = start_run(argv, DEFAULT_RECIPE)
    recipe = run.recipe
    if run.finished:
        return
    check_qa_recipe(recipe)

    # 2. Model config (an encoder that has a span head) and its tokenizer; windows fit its positions.
    spec = recipe.model
    if spec.name_or_path:
        spec = dataclasses.replace(spec, name_or_path=locate_pretrained(spec.name_or_path))
    config = load_model_config(spec)
    check_qa_model(config)
    check_block_size(config, recipe.qa.max_length, "qa.max_length")
    tokenizer_name = recipe.tokenizer.name_or_path or spec.name_or_path
    if not tokenizer_name:
        raise ToolkitError("a span model reads a pretrained tokenizer: set tokenizer.name_or_path (or model.name_or_path)")
    tokenizer = load_qa_tokenizer(locate_pretrained(tokenizer_name), recipe.tokenizer.revision)

    # 3. Data: SQuAD-format examples checked (answer_start), split by context, cut into windows.
    data = prepare_qa_data(recipe, tokenizer)

    # 4. Model: pretrained encoder with a new span head (or one built from a config).
    model = build_qa_model(spec, config, tokenizer, seed=recipe.training["seed"])

    # 5. Train, with exact match and F1 on the held-out questions before and after.
    trainer = build_qa_trainer(recipe, model, tokenizer, data)
    results = train_and_evaluate(trainer, recipe, run.resume_from, draw=answers)

    # 6. Save the model, tokenizer, every answer, results, plots and card (eval_results.json last).
    write_predictions(trainer, recipe)
    finish_run(trainer, recipe, data.stats, results, run.started, draw=answers)


if __name__ == "__main__":
    main()
