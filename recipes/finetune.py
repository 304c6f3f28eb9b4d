"""Fine-tune a pretrained causal language model, fully or with LoRA, from one YAML recipe.

    accelerate launch recipes/finetune.py [--config RECIPE.yaml] [section.key=value ...]

The causal_lm task, as recipes/pretrain.py runs it, with a fine-tuning recipe for its default:
LoRA on SmolLM2-135M-Instruct, chat examples packed padding-free, learned on the answers only.
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
DEFAULT_RECIPE = Path(__file__).parent / "finetune" / "default.yaml"


@exit_on_user_error
def main(argv=None):
    run_recipe(TASKS, TASK, DEFAULT_RECIPE, argv)


if __name__ == "__main__":
    main()
