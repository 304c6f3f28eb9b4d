"""Extractive question answering: an encoder with a span head, trained and scored on SQuAD-format data.

    accelerate launch recipes/qa.py [--config RECIPE.yaml] [section.key=value ...]

The qa task (toolkit/tasks/qa/), walked by toolkit.run.run_recipe: windows over long contexts,
exact match and F1 on held-out questions before and after, every answer saved.
"""

import sys
from pathlib import Path

# The checkout's root in place of recipes/ on the path: the toolkit imports without installing,
# and recipes/evaluate.py cannot shadow the `evaluate` library.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from toolkit.errors import exit_on_user_error  # noqa: E402
from toolkit.run import run_recipe  # noqa: E402
from toolkit.tasks import TASKS  # noqa: E402

TASK = "qa"
DEFAULT_RECIPE = Path(__file__).parent / "qa" / "default.yaml"


@exit_on_user_error
def main(argv=None):
    run_recipe(TASKS, TASK, DEFAULT_RECIPE, argv)


if __name__ == "__main__":
    main()
