"""Pretrain a causal language model from one YAML recipe.

    accelerate launch recipes/pretrain.py [--config RECIPE.yaml] [section.key=value ...]

Recipe, data, tokenizer, model, train, evaluate, save: each stage lives in `toolkit/`.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from toolkit.console import setup_logging  # noqa: E402
from toolkit.data.prepare import check_data, prepare_pretraining_data  # noqa: E402
from toolkit.errors import exit_on_user_error  # noqa: E402
from toolkit.modeling import build_model, check_block_size, load_model_config  # noqa: E402
from toolkit.outputs import check_output_dir  # noqa: E402
from toolkit.recipe import load_recipe, parse_command_line  # noqa: E402
from toolkit.run import finish_run, train_and_evaluate  # noqa: E402
from toolkit.training import build_trainer, init_processes  # noqa: E402

DEFAULT_RECIPE = Path(__file__).parent / "pretrain" / "default.yaml"


@exit_on_user_error
def main(argv=None):
    started = time.time()
    state = init_processes()
    log = setup_logging(state.is_main_process)

    # 1. Recipe: parsed and validated in full before anything expensive.
    config, overrides = parse_command_line(sys.argv[1:] if argv is None else argv)
    recipe = load_recipe(config, overrides, default=DEFAULT_RECIPE)
    run_state = check_output_dir(recipe)
    if run_state.finished:
        return
    model_config = load_model_config(recipe.model)
    check_block_size(model_config, recipe.data.block_size)
    check_data(recipe)
    log.info("recipe: %s -> %s", recipe.path, recipe.output_dir)

    # 2. Data and tokenizer: built once, on the main process; the others read its cache.
    with state.main_process_first():
        data = prepare_pretraining_data(recipe)

    # 3. Model, sized to the tokenizer.
    model = build_model(recipe.model, model_config, data.tokenizer, seed=recipe.training["seed"])

    # 4. Train, with perplexity measured before and after.
    trainer = build_trainer(recipe, model, data.tokenizer, data.train, data.eval)
    results = train_and_evaluate(trainer, recipe, run_state.resume_from)

    # 5. Save the model, tokenizer, metrics and samples; push when the recipe asks.
    finish_run(trainer, recipe, data.stats, results, started)


if __name__ == "__main__":
    main()
