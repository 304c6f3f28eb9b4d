"""Run a recipe script whose disk fills up at a chosen moment: a real file-size limit, for the full-disk tests.

    python tests/full_disk_during.py LIMIT_BYTES RECIPE_SCRIPT [recipe arguments ...]

Once the run's model and results are saved (when it starts on its plot), every write of
more than LIMIT_BYTES to a file fails as on a full disk (RLIMIT_FSIZE: EFBIG). Only the
moment is chosen here; the failing writes are the operating system's.
"""

import resource
import runpy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import toolkit.publish  # noqa: E402

limit, script, args = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
plot = toolkit.publish.plot_training


def plot_on_a_full_disk(*a, **kw):
    # Python ignores SIGXFSZ, so a write past the limit raises OSError(EFBIG) instead of killing.
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return plot(*a, **kw)


toolkit.publish.plot_training = plot_on_a_full_disk
sys.argv = [script, *args]
runpy.run_path(script, run_name="__main__")
