"""Run a recipe script that stores its data cache at the same moment as another run: for the shared-cache test.

    python tests/cache_race.py BARRIER_DIR RECIPE_SCRIPT [recipe arguments ...]

Each process, once its data is built, marks BARRIER_DIR and waits (up to 120 s) until two
processes have, then stores: both runs reach the cache folder together. Only the moment is
chosen here; the store is the toolkit's own.
"""

import os
import runpy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import toolkit.data.prepare as prepare  # noqa: E402

barrier, script, args = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
store = prepare._store


def store_together(*a, **kw):
    (barrier / str(os.getpid())).touch()
    deadline = time.monotonic() + 120
    while len(list(barrier.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    return store(*a, **kw)


prepare._store = store_together
sys.argv = [script, *args]
runpy.run_path(script, run_name="__main__")
