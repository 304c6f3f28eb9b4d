"""Preference tuning: DPO and its relatives (IPO, hinge, robust DPO, SimPO, ORPO) from one YAML recipe.

    accelerate launch recipes/preference.py [--config RECIPE.yaml] [section.key=value ...]

The preference task (toolkit/tasks/preference/), walked by toolkit.run.run_recipe: pairs held out
by prompt, the reference set up, reward accuracy and margins before and after, save.
"""

import sys
from pathlib import Path

# The checkout's root in place of recipes/ on the path: the toolkit imports without installing,
# and recipes/evaluate.py cannot shadow the `evaluate` library.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from toolkit.errors import exit_on_user_error  # noqa: E402
from toolkit.run import run_recipe  # noqa: E402
from toolkit.tasks import TASKS  # noqa: E402

TASK = "preference"
DEFAULT_RECIPE = Path(__file__).parent / "preference" / "default.yaml"


@exit_on_user_error
def main(argv=None):
    run_recipe(TASKS, TASK, DEFAULT_RECIPE, argv)


if __name__ == "__main__":
    main()
