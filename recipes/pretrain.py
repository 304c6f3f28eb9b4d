"""Pretrain a causal language model from one YAML recipe.

    accelerate launch recipes/pretrain.py [--config RECIPE.yaml] [section.key=value ...]

Recipe, data, tokenizer, model, train, evaluate, save: each stage lives in `toolkit/`.
"""

import sys
from pathlib import Path

# The checkout's root in place of recipes/ on the path: the toolkit imports without installing,
# and recipes/evaluate.py cannot shadow the `evaluate` library.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from toolkit.data.prepare import check_data, prepare_pretraining_data  # noqa: E402
from toolkit.errors import exit_on_user_error  # noqa: E402
from toolkit.modeling import build_model, check_block_size, load_model_config  # noqa: E402
from toolkit.run import finish_run, start_run, train_and_evaluate  # noqa: E402
from toolkit.training import build_trainer  # noqa: E402

DEFAULT_RECIPE = Path(__file__).parent / "pretrain" / "default.yaml"


@exit_on_user_error
def main(argv=None):
    # 1. Recipe: parsed and validated in full before anything expensive; a finished run is left alone.
    run = start_run(argv, DEFAULT_RECIPE)
    recipe = run.recipe
    if run.finished:
        return
    model_config = load_model_config(recipe.model)
    check_block_size(model_config, recipe.data.block_size)
    check_data(recipe)

    # 2. Data and tokenizer: built once, by the first process; the others read its cache.
    data = prepare_pretraining_data(recipe)

    # 3. Model, sized to the tokenizer.
    model = build_model(recipe.model, model_config, data.tokenizer, seed=recipe.training["seed"])

    # 4. Train, with perplexity measured before and after.
    trainer = build_trainer(recipe, model, data.tokenizer, data.train, data.eval)
    results = train_and_evaluate(trainer, recipe, run.resume_from)

    # 5. Save the model, tokenizer, metrics, samples, plots and card; push when the recipe asks.
    finish_run(trainer, recipe, data.stats, results, run.started)


if __name__ == "__main__":
    main()
