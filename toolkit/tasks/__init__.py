"""The registry of tasks: `task:` in a recipe -> the Task (toolkit/task.py) that runs and scores it.

Entry points (the recipe scripts, toolkit/cli.py, recipes/evaluate.py) look a task up
here; nothing else imports a task. Adding a task: a package beside these four that
subclasses Task, and one entry below.
"""

from __future__ import annotations

from pathlib import Path

from toolkit import recipe as recipes
from toolkit.errors import ToolkitError
from toolkit.outputs import RECIPE_FILE
from toolkit.task import Task
from toolkit.tasks.causal_lm import CausalLM
from toolkit.tasks.preference import PreferenceTask
from toolkit.tasks.qa import QATask
from toolkit.tasks.seq2seq import Seq2SeqTask

TASKS: dict[str, Task] = {task.name: task for task in (CausalLM(), Seq2SeqTask(), QATask(), PreferenceTask())}


def load_recipe(path, overrides=(), default=None, task: str | None = None) -> recipes.Recipe:
    """A recipe of any registered task (or, with `task`, of that task only), read and validated."""
    return recipes.load_recipe(path, overrides, default=default, tasks=TASKS, task=task)


def rescore_run(run_dir: str | Path) -> dict:
    """eval_* scores of the model saved in `run_dir`, computed as its run computed them: the run's own
    recipe decides the task, the data and the scores."""
    run_dir = Path(run_dir)
    if not (run_dir / RECIPE_FILE).is_file() or not any(run_dir.glob("*.safetensors")):
        raise ToolkitError(f"{run_dir} holds no finished toolkit run (a recipe.yaml and a saved model)")
    # Logging off: evaluating must not write into the run's TensorBoard folder.
    recipe = load_recipe(run_dir / RECIPE_FILE, ["training.report_to=[]"])
    return TASKS[recipe.task].rescore(recipe, run_dir)
