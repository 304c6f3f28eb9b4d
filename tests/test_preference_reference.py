"""The precomputed reference (toolkit/tasks/preference/reference.py): keyed by what shapes its numbers,
computed by each process's share and assembled on disk, read back by a rerun, and no wait without an end.

Launched as a script (the two-process test does so), this file runs one process's part:
    toolkit launch accelerate_configs/cpu_2proc.yaml tests/test_preference_reference.py FOLDER BASE_MODEL
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # launched as a script

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments  # noqa: E402

from tests.conftest import ROOT, free_port, run  # noqa: E402
from toolkit.errors import ToolkitError  # noqa: E402
from toolkit.modeling import ResolvedModel  # noqa: E402
from toolkit.recipe import Model  # noqa: E402
from toolkit.tasks.preference.data import PairCollator, encode_pairs  # noqa: E402
from toolkit.tasks.preference.examples import normalise  # noqa: E402
from toolkit.tasks.preference.logps import sequence_logps  # noqa: E402
from toolkit.tasks.preference.reference import precompute_reference, reference_key  # noqa: E402
from toolkit.tokenizer import ensure_chat_template  # noqa: E402

EVAL_BATCH = 4  # 21 training pairs: 6 batches, 3 for each of two processes; 5 held out: 2 batches, 1 each


def _tokenizer(base: Path):
    tok = AutoTokenizer.from_pretrained(base)
    ensure_chat_template(tok)
    return tok


@pytest.fixture(scope="module")
def tok(tiny_base):
    return _tokenizer(tiny_base)


def _pairs(tok, rows: range):
    from toolkit.tasks.preference.corpus import python_docs_preference

    corpus = python_docs_preference()
    pairs = [normalise(corpus["prompt"][i], corpus["chosen"][i], corpus["rejected"][i], f"row {i}", chat=True)
             for i in rows]
    return encode_pairs(pairs, tok, chat=True, max_length=128)[0]


def _setup(folder: Path, base: Path, tok):
    """A real Trainer of the tiny base with the pairs' collator, and 21 + 5 pairs. The reference needs no more
    of a Trainer than its arguments and collator: the preference Trainer's own build is tested elsewhere."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base)
    args = TrainingArguments(output_dir=str(folder / "out"), per_device_eval_batch_size=EVAL_BATCH, report_to=[])
    trainer = Trainer(model=model, args=args, data_collator=PairCollator(tok.pad_token_id, packed=True))
    return trainer, _pairs(tok, range(21)), _pairs(tok, range(21, 26))


def _precompute(trainer, train, held_out, cache_dir: Path, data_cache: str | None = None, wait_timeout: float = 120):
    base = ResolvedModel(Model(name_or_path=trainer.model.name_or_path), None)
    return precompute_reference(trainer, trainer.model, base, data_cache, str(cache_dir), wait_timeout, True,
                                train, held_out)


def _columns(*sets) -> list:
    return [[list(ds["ref_chosen_logps"]), list(ds["ref_rejected_logps"])] for ds in sets]


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _key(base: Path, hashes: Path | None, **spec) -> str:
    return reference_key(ResolvedModel(Model(name_or_path=str(base), **spec), None), "0123abcd", True, None, hashes)


def test_the_key_follows_the_weights_content_not_their_file_times(tmp_path, tiny_base):
    base, hashes = tmp_path / "base", tmp_path / "weights.json"
    shutil.copytree(tiny_base, base)
    weights = base / "model.safetensors"
    time.sleep(2.1)  # a file changed within the last 2 s may change again unseen: its hash is not remembered
    first = _key(base, hashes)
    assert str(weights.resolve()) in json.loads(hashes.read_text())  # a multi-GB model is read once
    assert _key(base, hashes) == first == _key(base, None)

    before = weights.stat()
    content = bytearray(weights.read_bytes())
    content[-1] ^= 1  # the last byte of the last tensor: the same size, other weights
    weights.write_bytes(bytes(content))
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = weights.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    changed = _key(base, hashes)
    assert changed != first and changed == _key(base, None)

    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns + 3600 * 10**9))  # touched: the same content
    assert _key(base, hashes) == changed

    moved = tmp_path / "elsewhere"
    shutil.copytree(base, moved)  # the same weights in another folder: the same reference
    assert _key(moved, hashes) == changed
    others = {_key(base, hashes, config={"rope_theta": 5000.0}), _key(base, hashes, attn_implementation="eager"),
              _key(base, hashes, revision="v2"),
              reference_key(ResolvedModel(Model(name_or_path=str(base)), None), "0123abcd", False, None, hashes),
              reference_key(ResolvedModel(Model(name_or_path=str(base)), None), "4567cdef", True, None, hashes)}
    assert len(others) == 5 and changed not in others


def test_a_rerun_reads_the_cache_back_and_computes_nothing(tmp_path, tiny_base, tok):
    trainer, *pairs = _setup(tmp_path, tiny_base, tok)
    cache, data_cache = tmp_path / "cache", str(tmp_path / "cache" / "preference" / "0123456789abcdef")
    first = _precompute(trainer, *pairs, cache, data_cache)
    # The initial policy is the reference: its own sums, pair by pair.
    batch = trainer.data_collator([first[0][i] for i in range(EVAL_BATCH)])
    with torch.no_grad():
        sums, _ = sequence_logps(trainer.model.eval(), batch)
    assert batch["ref_logps"][:, 0].tolist() == sums[0::2].tolist()
    assert batch["ref_logps"][:, 1].tolist() == sums[1::2].tolist()

    root = tmp_path / "cache" / "preference-reference"
    [folder] = [p for p in root.iterdir() if p.is_dir()]
    assert not [name for name in _entries(root) if name.startswith(".")]  # no parts or temporary folder left
    stored = folder / "logps.json"
    stamp = (folder.stat().st_ino, folder.stat().st_mtime_ns, stored.stat().st_ino, stored.stat().st_mtime_ns)
    listing = _entries(root)

    with torch.no_grad():  # the policy has trained since: a recomputed reference would follow it
        for p in trainer.model.parameters():
            p.add_(0.01)
    assert _columns(*_precompute(trainer, *pairs, cache, data_cache)) == _columns(*first)
    assert (folder.stat().st_ino, folder.stat().st_mtime_ns, stored.stat().st_ino, stored.stat().st_mtime_ns) == stamp
    assert _entries(root) == listing
    fresh = _precompute(trainer, *pairs, tmp_path / "other-cache", data_cache)
    assert _columns(*fresh) != _columns(*first)  # computed anew, the changed weights do score otherwise


def test_a_share_that_never_arrives_ends_the_wait_in_one_line_and_leaves_no_cache(tmp_path, tiny_base, tok,
                                                                                   monkeypatch):
    trainer, train, held_out = _setup(tmp_path, tiny_base, tok)
    root = tmp_path / "cache" / "preference-reference"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    # Rank 0 of two: its peer never writes its share. Rank 1: its first process never assembles the parts.
    for rank, waited_for in (("0", "other processes to write their shares"), ("1", "first process to store")):
        monkeypatch.setenv("LOCAL_RANK", rank)
        started = time.monotonic()
        with pytest.raises(ToolkitError) as raised:
            _precompute(trainer, train, held_out, tmp_path / "cache", wait_timeout=1)
        message = str(raised.value)
        assert time.monotonic() - started < 30
        assert "\n" not in message and message.startswith("waited 1 s") and waited_for in message, message
        assert str(root) in message and message.endswith("raise data.wait_timeout"), message
        assert not [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]  # nothing like a cache

    # The next run, one process: the stale parts neither block it nor count; it stores the cache and clears them.
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    stale = [p for p in root.iterdir() if p.name.startswith(".parts-")]
    assert len(stale) == 1 and len(_entries(stale[0])) == 4  # both ranks' shares of both sets
    values = _columns(*_precompute(trainer, train, held_out, tmp_path / "cache", wait_timeout=1))
    assert not [name for name in _entries(root) if name.startswith(".")]
    assert _columns(*_precompute(trainer, train, held_out, tmp_path / "fresh-cache")) == values



@pytest.mark.slow
def test_two_processes_each_compute_a_share_and_store_exactly_what_one_process_does(tmp_path, tiny_base, tok):
    two = tmp_path / "two"
    launched = run([sys.executable, "-m", "toolkit.cli", "launch", str(ROOT / "accelerate_configs" / "cpu_2proc.yaml"),
                    "--main_process_port", str(free_port()), __file__, str(two), str(tiny_base)], timeout=600)
    assert launched.returncode == 0, launched.stderr[-3000:]
    for share in ("(share 1 of 2)", "(share 2 of 2)"):  # 12 + 4 and 9 + 1 pairs
        assert share in launched.stderr, launched.stderr[-3000:]
    ranks = [json.loads((two / f"rank{r}.json").read_text()) for r in (0, 1)]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each of the two processes ran
    try:
        one = _columns(*_precompute(*_setup(tmp_path, tiny_base, tok), tmp_path / "one-cache"))
    finally:
        torch.set_num_threads(threads)
    assert ranks[0] == ranks[1] == one  # exactly: every batch is the one a single process forms
    assert len(one[0][0]) == 21 and len(one[1][0]) == 5


if __name__ == "__main__":  # one process of the two-process test
    from toolkit.training import init_processes

    init_processes()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    folder, base = Path(sys.argv[1]), Path(sys.argv[2])
    rank = os.environ["LOCAL_RANK"]
    computed = _precompute(*_setup(folder / f"rank{rank}", base, _tokenizer(base)), folder / "cache")
    (folder / f"rank{rank}.json").write_text(json.dumps(_columns(*computed)))
