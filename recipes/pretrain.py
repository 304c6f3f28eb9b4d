"""Pretrain a causal language model from one YAML recipe: from a config (tokenizer included), or on from
pretrained weights.

    accelerate launch recipes/pretrain.py [--config RECIPE.yaml] [section.key=value ...]

The causal_lm task (toolkit/tasks/causal_lm/), walked by toolkit.run.run_recipe: recipe checked, model
resolved, data and tokenizer, model, train with perplexity before and after, save, card, push.
"""

import sys
from pathlib import Path

# The checkout's root in place of recipes/ on the path: the toolkit imports without installing,
# and recipes/evaluate.py cannot shadow the `evaluate` library.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from toolkit.errors import exit_on_user_error  # noqa: E402
from toolkit.run import run_recipe  # noqa: E402
from toolkit.tasks import TASKS  # noqa: E402

TASK = "causal_lm"
DEFAULT_RECIPE = Path(__file__).parent / "pretrain" / "default.yaml"


@exit_on_user_error
def main(argv=None):
    run_recipe(TASKS, TASK, DEFAULT_RECIPE, argv)


if __name__ == "__main__":
    main()
