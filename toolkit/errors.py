"""User-facing errors: one line that names the problem and the fix, a non-zero exit, no traceback."""

import functools
import sys

from tqdm import tqdm


class ToolkitError(Exception):
    """A problem with the user's input (recipe, data, paths), reported as one line."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (library errors can run to pages)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def exit_on_user_error(main):
    """Run `main`; turn a ToolkitError into `error: <message>` on stderr and exit status 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except ToolkitError as err:
            _say(f"error: {err}")
            sys.exit(2)
        except KeyboardInterrupt:
            _say("interrupted: rerun the same command to resume from the last checkpoint")
            sys.exit(130)

    return wrapper


def _say(line: str) -> None:
    """A line of its own on stderr, even when a progress bar (training, map) holds the current one."""
    tqdm.write(line, file=sys.stderr)
