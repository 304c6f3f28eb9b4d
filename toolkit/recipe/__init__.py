"""Recipes: one YAML file per run, `section.key=value` overrides, validation before any work.

sections.py holds the shared sections and the Recipe, types.py the type checks, load.py the
reading of files and overrides, arguments.py the `training:` section (TrainingArguments).
"""

from toolkit.recipe.arguments import TRAINING_DEFAULTS, training_arguments
from toolkit.recipe.load import load_recipe, parse_command_line
from toolkit.recipe.sections import DEFAULT_TASK, Cleaning, Data, Evaluation, Hub, Lora, Model, Recipe, Source, Tokenizer

__all__ = ["DEFAULT_TASK", "TRAINING_DEFAULTS", "Cleaning", "Data", "Evaluation", "Hub", "Lora", "Model", "Recipe",
           "Source", "Tokenizer", "load_recipe", "parse_command_line", "training_arguments"]
