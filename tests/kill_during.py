"""Run a recipe script and SIGKILL it at a chosen moment: a real kill, for the resume tests.

    python tests/kill_during.py POINT STEP RECIPE_SCRIPT [recipe arguments ...]

POINT is where the process dies, at optimizer step STEP:
  step  after the step, before anything is logged, evaluated or saved;
  save  inside checkpoint-STEP's save: the model is written, the optimizer state is not;
  eval  inside the evaluation at STEP, after its first batch.
Only the moment is chosen here; the kill itself is an ordinary SIGKILL of this process.
"""

import os
import runpy
import signal
import sys

from transformers import Trainer

point, step, script, args = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]


def die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def kill_at(method_name: str, when):
    original = getattr(Trainer, method_name)

    def wrapped(self, *a, **kw):
        if self.state.global_step == step and when(self):
            die()
        return original(self, *a, **kw)

    setattr(Trainer, method_name, wrapped)


if point == "step":
    kill_at("_maybe_log_save_evaluate", lambda self: True)
elif point == "save":
    kill_at("_save_optimizer_and_scheduler", lambda self: True)
elif point == "eval":
    # prediction_step runs once per batch: the second call means one batch is done.
    calls = {"n": 0}

    def second_batch(self):
        calls["n"] += 1
        return self.state.max_steps > 0 and calls["n"] == 2

    kill_at("prediction_step", second_batch)
else:
    sys.exit(f"unknown point {point!r}: use step, save or eval")

sys.argv = [script, *args]
runpy.run_path(script, run_name="__main__")
