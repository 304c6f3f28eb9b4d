"""The reference's log-probs precomputed once, before training, and cached beside the data
(`preference.reference: precomputed`): a resumed run reads them back, never recomputes them
with the weights it has trained since.

The work is shared as the data cache's is, per machine and on disk, never in a collective (a
long precompute would outlast the collective's timeout): each of a machine's processes
(LOCAL_RANK of LOCAL_WORLD_SIZE) computes a contiguous run of whole eval batches of each set and
writes it as a part file into a parts folder beside the cache; the machine's first process
assembles the parts into a temporary folder and renames it into place in one step, while the
others poll the disk for it. Either wait ends after data.wait_timeout seconds with one line.
Machines do not wait for each other: with a disk each, every machine computes the cache on its
own (as it prepares its own data cache); on a shared disk each machine has its own parts folder
and the first complete cache renamed into place is the one every machine reads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from datasets import Dataset

from toolkit.data.prepare import wait_on_disk
from toolkit.errors import ToolkitError
from toolkit.modeling import ResolvedModel
from toolkit.outputs import write_atomic
from toolkit.tasks.preference.logps import sequence_logps

logger = logging.getLogger("toolkit")

FORMAT = 2  # bump when the stored layout or the way the log-probs are computed changes
MARKER = "logps.json"  # the cache itself; its folder appears only whole (renamed into place)
LONGER = "; for a longer precompute raise data.wait_timeout"
FRESH_SECONDS = 2.0  # a file changed this recently may change again within the same time stamp: not remembered


def precompute_reference(trainer, source, model: ResolvedModel, data_cache: str | None, cache_dir: str,
                         wait_timeout: float, packed: bool, train: Dataset,
                         held_out: Dataset) -> tuple[Dataset, Dataset]:
    """Both sets with the reference's log-probs (of `source`, its adapter off) as the columns
    ref_chosen_logps and ref_rejected_logps: read from the cache, or computed by this machine's
    processes, each its share, and stored there."""
    root = Path(os.path.expanduser(cache_dir)) / "preference-reference"
    data_key = Path(data_cache).name if data_cache else _fingerprints(train, held_out)
    folder = root / reference_key(model, data_key, packed, _quantization(source), root / "weights.json")
    sets = {"train": train, "eval": held_out}
    if (folder / MARKER).is_file():
        logger.info("reference: log-probs read from %s", folder)
    else:
        _compute_shared(trainer, source, sets, folder, wait_timeout)
    stored = json.loads((folder / MARKER).read_text())
    out = []
    for name, ds in sets.items():
        values = stored[name]
        if len(values) != len(ds):
            raise ToolkitError(f"the reference log-probs cached in {folder} are for {len(values)} {name} pairs, not"
                               f" {len(ds)}; remove that folder to compute them again")
        out.append(ds.add_column("ref_chosen_logps", [v[0] for v in values])
                   .add_column("ref_rejected_logps", [v[1] for v in values]))
    return tuple(out)


# --------------------------------------------------------------------------- the key


def reference_key(model: ResolvedModel, data_key: str, packed: bool, quantization=None,
                  hashes: Path | None = None) -> str:
    """What shapes the numbers: the pairs (the data cache's key), the base weights (their content),
    the settings that change a forward pass, and packed or padded batches."""
    spec = model.spec
    key = {"format": FORMAT, "data": data_key, "weights": _weights_id(spec.name_or_path, spec.revision, hashes),
           "config": spec.config, "attn_implementation": spec.attn_implementation, "revision": spec.revision,
           "quantization": quantization, "packed": packed}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _fingerprints(train, held_out) -> str:
    """Without a data cache: the datasets' own fingerprints (the same in every process)."""
    return hashlib.sha256(f"{train._fingerprint}:{held_out._fingerprint}".encode()).hexdigest()[:16]


def _quantization(source) -> dict | None:
    """A 4-bit base (QLoRA) scores differently from the float one."""
    found = getattr(getattr(source, "config", None), "quantization_config", None)
    return found.to_dict() if hasattr(found, "to_dict") else found


def _weights_id(name: str, revision: str | None, hashes: Path | None) -> str:
    """A local folder: a hash of its weight files' content and its config.json (a local file, such as a GGUF
    file not yet converted: its content). A Hub id: the commit of its snapshot in the Hub cache (a commit pins
    every file; the weights are not read again), else the id and the revision asked for."""
    where = Path(name)
    if where.is_dir():
        files = (sorted(where.glob("*.safetensors")) or sorted(where.glob("*.bin"))) + [where / "config.json"]
    elif where.is_file():
        files = [where]
    else:
        from huggingface_hub import try_to_load_from_cache

        try:
            found = try_to_load_from_cache(name, "config.json", revision=revision)
        except ValueError:  # not a valid repo id either: from_pretrained has said so already
            found = None
        commit = Path(found).parent.name if isinstance(found, str) else revision
        return f"hub:{name}@{commit}"
    known = json.loads(hashes.read_text()) if hashes is not None and hashes.is_file() else {}
    remembered = dict(known)
    digest = hashlib.sha256()
    for path in files:
        if path.is_file():
            digest.update(f"{path.name}:{_file_hash(path, remembered)}\n".encode())
    if hashes is not None and remembered != known:
        _write_json(hashes, remembered)
    return digest.hexdigest()


def _file_hash(path: Path, remembered: dict) -> str:
    """sha256 of a file's content, read in chunks; remembered by its stamp (size, times, inode), which any
    write changes (ctime too, which no one can set back), so a multi-GB model is read once."""
    st = path.stat()
    stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    name = str(path.resolve())
    if remembered.get(name, {}).get("stamp") == stamp:
        return remembered[name]["sha256"]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    if time.time() - max(st.st_mtime, st.st_ctime) > FRESH_SECONDS:
        remembered[name] = {"stamp": stamp, "sha256": digest.hexdigest()}
    return digest.hexdigest()


# --------------------------------------------------------------------------- shared work


def _compute_shared(trainer, source, sets: dict, folder: Path, wait_timeout: float) -> None:
    """This process's share of each set computed and written as parts; the first process assembles them."""
    rank, world = int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    parts = folder.parent / f".parts-{folder.name}-{socket.gethostname()}"
    batch = trainer.args.per_device_eval_batch_size
    shares = {name: [_share(len(ds), batch, r, world) for r in range(world)] for name, ds in sets.items()}
    if rank < world:  # without LOCAL_WORLD_SIZE, the first process computes it all and the others wait
        logger.info("reference: computing the log-probs of %s pairs (share %d of %d) for %s",
                    " + ".join(str(len(s[rank])) for s in shares.values()), rank + 1, world, folder)
        for name, ds in sets.items():
            mine = shares[name][rank]
            values = _reference_logps(source, trainer, ds.select(mine))
            try:
                _write_json(parts / _part(name, mine), values)
            except OSError:
                if not (folder / MARKER).is_file():  # else another run stored the cache and removed the parts
                    raise
    if rank != 0:
        wait_on_disk(lambda: (folder / MARKER).is_file(), wait_timeout,
                     f"for this machine's first process to store the reference log-probs in {folder}, and they are"
                     f" not there: see that process's log (did it fail?){LONGER}")
        return
    expected = [(name, r) for name, ranges in shares.items() for r in ranges]
    wait_on_disk(lambda: (folder / MARKER).is_file() or all((parts / _part(*p)).is_file() for p in expected),
                 wait_timeout, f"for this machine's other processes to write their shares of the reference log-probs"
                 f" for {folder} (parts in {parts.name}), and some are not there: see their logs (did one fail?){LONGER}")
    if not (folder / MARKER).is_file():
        _store(folder, {name: [v for r in ranges for v in json.loads((parts / _part(name, r)).read_text())]
                        for name, ranges in shares.items()})
    shutil.rmtree(parts, ignore_errors=True)


def _share(n: int, batch: int, rank: int, world: int) -> range:
    """A contiguous run of whole batches: each batch is the one a single process forms, so the numbers are too."""
    batches = -(-n // batch)
    return range(min(batches * rank // world * batch, n), min(batches * (rank + 1) // world * batch, n))


def _part(name: str, rows: range) -> str:
    """A part is named by its rows: a stale part of a killed run counts only where it holds the same rows."""
    return f"{name}-{rows.start}-{rows.stop}.json"


@torch.no_grad()
def _reference_logps(model, trainer, dataset) -> list[list[float]]:
    """The reference's sums for every pair (a LoRA policy's adapter off), in the Trainer's eval batches."""
    model.to(trainer.args.device)
    was_training = model.training
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=trainer.args.per_device_eval_batch_size,
                                         collate_fn=trainer.data_collator)
    off = model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()
    out = []
    with off:
        for batch in loader:
            batch = {k: v.to(model.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            sums, _ = sequence_logps(model, batch)
            out += torch.stack([sums[0::2], sums[1::2]], dim=1).tolist()
    model.train(was_training)
    return out


def _write_json(path: Path, values) -> None:
    """Whole or not at all (a temporary file beside it, flushed, renamed over it): a reader never sees half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(values))


def _store(folder: Path, values: dict) -> None:
    """A temporary folder, then renamed into place in one step: a killed run never leaves half a cache, and of
    two runs storing the same cache at once the first rename wins (the copies are equal)."""
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
    try:
        _write_json(tmp / MARKER, values)
        try:
            os.rename(tmp, folder)  # fails, never merges, where the folder exists
        except OSError:
            if not (folder / MARKER).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
