"""Translation and summarization from one YAML recipe, scored with BLEU and chrF or ROUGE.

    accelerate launch recipes/seq2seq.py [--config RECIPE.yaml] [section.key=value ...]

The default recipe translates English to German (a small T5 trained from scratch on the
gettext catalogs of this machine); recipes/seq2seq/summarization.yaml summarizes
standard-library docstrings with an encoder-decoder warm-started from MiniLM. The seq2seq
task (toolkit/tasks/seq2seq/), walked by toolkit.run.run_recipe.
"""

import sys
from pathlib import Path

# The checkout's root in place of recipes/ on the path: the toolkit imports without installing,
# and recipes/evaluate.py cannot shadow the `evaluate` library.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from toolkit.errors import exit_on_user_error  # noqa: E402
from toolkit.run import run_recipe  # noqa: E402
from toolkit.tasks import TASKS  # noqa: E402

TASK = "seq2seq"
DEFAULT_RECIPE = Path(__file__).parent / "seq2seq" / "translation.yaml"


@exit_on_user_error
def main(argv=None):
    run_recipe(TASKS, TASK, DEFAULT_RECIPE, argv)


if __name__ == "__main__":
    main()
