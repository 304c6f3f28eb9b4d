"""User-facing errors: one line that names the problem and the fix, a non-zero exit, no traceback."""

import errno
import functools
import re
import sys

from tqdm import tqdm

FULL_DISK = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}  # no space, a file size limit, a quota


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
        except OSError as err:
            if err.errno not in FULL_DISK:
                raise
            # Every result is written whole or not at all (outputs.write_atomic), and the run is
            # marked finished last: the same command, once there is room, completes what is missing.
            where = f" writing {err.filename}" if err.filename else ""
            _say(f"error: the disk is full{where} ({err.strerror}); free some space, then rerun the same"
                 " command: it resumes or completes what is missing")
            sys.exit(1)
        except KeyboardInterrupt:
            _say("interrupted: rerun the same command to resume from the last checkpoint")
            sys.exit(130)
        except Exception as err:
            lost = lost_process(err)
            if lost is None:
                raise
            _say(f"error: {lost}; the run stopped: run the same command again (on every machine) to resume"
                 " from the last complete checkpoint")
            sys.exit(1)

    return wrapper


# What gloo and NCCL say when a peer process went away (killed, its machine lost) or never answered.
_LOST = re.compile(r"Connection (?:reset|closed) by peer|Broken pipe|Connection refused|[Tt]imed out"
                   r"|remote process exited|NCCL (?:error|communicator)")


def lost_process(err: BaseException) -> str | None:
    """In a run of several processes, why this one lost contact with another (a collective failed
    because a peer died or timed out); None for any other error, which keeps its traceback."""
    torch = sys.modules.get("torch")  # never imported here: without torch there is no process group
    dist = getattr(torch, "distributed", None)
    if dist is None or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
        return None
    text = str(err)
    found = _LOST.search(text) if re.search(r"gloo|NCCL|c10d|TCPStore", text) else None  # not an HTTP timeout
    if not (found or isinstance(err, getattr(dist, "DistError", ()))):
        return None
    cause = found.group(0) if found else first_line(err)[:120]
    return f"process rank {dist.get_rank()} of {dist.get_world_size()} lost contact with another process of the run ({cause})"


# A Hugging Face token wherever it appears, and the value after a key named like a secret
# (hub_token=..., password: ...); bos/eos/pad/... tokens are text, not secrets.
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{8,}")
_NAMED = (r"(?<![a-z])(?<!bos_)(?<!eos_)(?<!pad_)(?<!unk_)(?<!sep_)(?<!cls_)(?<!mask_)"
          r"(?:token|password|passwd|secret|(?:api|access|private|secret|auth)_?key)")
SECRET_NAME = re.compile(_NAMED + "$", re.IGNORECASE)
_SECRET_VALUE = re.compile(r"\b([\w.\[\]-]*?" + _NAMED + r"\s*[=:]\s*['\"]?)([^\s'\",;)]+)", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with secret values masked: no error line ever shows a token or password."""
    return _HF_TOKEN.sub("hf_***", _SECRET_VALUE.sub(lambda m: m.group(1) + "***", str(text)))


def _say(line: str) -> None:
    """A line of its own on stderr, even when a progress bar (training, map) holds the current one."""
    tqdm.write(redact(line), file=sys.stderr)
