"""Run a recipe script in which each machine's first process never stores the prepared data: for the wait tests.

    accelerate launch ... tests/first_process_stuck.py RECIPE_SCRIPT [recipe arguments ...]

The process with LOCAL_RANK 0 builds the data, then sleeps instead of storing it, as a
first process that hangs (a stuck file system, a debugger) or is gone where no launcher
notices. The others wait for that data as the toolkit makes them; only the stall is chosen here.
"""

import os
import runpy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import toolkit.data.prepare as prepare  # noqa: E402

script, args = sys.argv[1], sys.argv[2:]
if int(os.environ.get("LOCAL_RANK", "0")) == 0:
    def never_store(*a, **kw):
        while True:
            time.sleep(1)

    prepare._store = never_store
sys.argv = [script, *args]
runpy.run_path(script, run_name="__main__")
