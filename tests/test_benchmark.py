"""The throughput benchmark runs end to end, and the throughput callback logs what it says."""

from __future__ import annotations

import itertools
import json
import sys
from types import SimpleNamespace

import pytest

from tests.conftest import ROOT, run

BENCHMARK = ROOT / "benchmarks" / "train_throughput.py"


@pytest.mark.slow
def test_benchmark_ends_with_a_json_line_of_positive_figures():
    result = run([sys.executable, str(BENCHMARK), "--device", "cpu", "--quick"], timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])

    assert report["device"] == "cpu" and report["quick"] is True
    [shape] = report["shapes"]
    assert set(shape["ways"]) == {"toolkit", "run_clm", "bare"}
    assert shape["flops_per_token"] > 0
    for way in shape["ways"].values():
        assert way["tokens_per_s"] > 0
        assert way["mfu"] > 0  # against a CPU rate measured in the same run; a noisy machine can push it past 1
        assert way["peak_memory_mib"] > 0
    assert shape["ratios"]["toolkit_vs_run_clm"] > 0 and shape["ratios"]["toolkit_vs_bare"] > 0
    prep = report["data_prep"]
    assert prep["toolkit_tokens_per_s"] > 0 and prep["run_clm_tokens_per_s"] > 0 and prep["ratio"] > 0
    assert prep["tokenizer_alone_tokens_per_s"] > 0 and prep["tokenizer_alone_ratio"] > 0
    assert 0 < prep["toolkit_seconds_in_tokenizer"]
    assert "toolkit / way" in result.stdout  # the table precedes the JSON line


def _state(step, tokens):
    return SimpleNamespace(global_step=step, num_input_tokens_seen=tokens, log_history=[])


def test_throughput_leaves_evaluation_time_out_and_computes_mfu(monkeypatch):
    import toolkit.throughput as throughput

    # perf_counter at: construction, train begin, step end (4 s of training), evaluation end
    # (10 s of evaluation), step end (2 s more of training), log; then the restart.
    clock = itertools.chain([0.0, 0.0, 4.0, 14.0, 16.0, 16.0], itertools.repeat(16.0))
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(throughput.torch.cuda, "is_available", lambda: False)
    args = SimpleNamespace(world_size=2, train_batch_size=1, gradient_accumulation_steps=1)
    callback = throughput.ThroughputCallback(flops_per_token=1000, peak_flops=1e6)
    callback.on_train_begin(args, _state(0, 0), None)
    callback.on_step_end(args, _state(1, 600), None)
    callback.on_evaluate(args, _state(1, 600), None)
    callback.on_step_end(args, _state(2, 1200), None)
    logs = {"loss": 2.0}
    callback.on_log(args, _state(2, 1200), None, logs=logs)

    assert logs["tokens_per_second"] == pytest.approx(1200 / 6)  # 6 s of training, not 16
    assert logs["mfu"] == pytest.approx(1000 * (1200 / 6 / 2) / 1e6)  # per device: two processes
    assert logs["peak_memory_gib"] > 0


def test_throughput_figures_reach_the_reporters_and_the_history(tmp_path):
    import torch
    from datasets import Dataset
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments
    from transformers.integrations import TensorBoardCallback

    from toolkit.data.packing import CausalCollator
    from toolkit.throughput import add_throughput_callback

    class Spy(TrainerCallback):  # a reporter added the usual way, after the others
        seen = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.seen.append(dict(logs))

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32))
    rows = Dataset.from_dict({"input_ids": torch.randint(0, 64, (16, 16)).tolist()})
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=2, logging_steps=2,
                             report_to=["tensorboard"], save_strategy="no",
                             include_num_input_tokens_seen="non_padding", use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=CausalCollator(0), callbacks=[Spy()])
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback):
            callback.logging_dir = str(tmp_path / "runs")
    add_throughput_callback(trainer, sequence_length=16)
    trainer.train()

    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in logged] == [2, 4]
    for entry in logged:
        assert entry["tokens_per_second"] > 0 and entry["peak_memory_gib"] > 0
        assert "mfu" not in entry  # no known GPU: no peak to divide by
    assert all("tokens_per_second" in logs for logs in Spy.seen if "loss" in logs)
    events = EventAccumulator(str(tmp_path / "runs")).Reload()
    assert {"train/tokens_per_second", "train/peak_memory_gib"} <= set(events.Tags()["scalars"])
