"""Pushing to the Hub: without a network the model stays saved and the user gets the command to push later."""

import logging

from tests.conftest import ROOT
from toolkit.publish import push_run
from toolkit.recipe import load_recipe


def test_failed_push_says_how_to_push_later(tmp_path, monkeypatch, caplog):
    # The Hub cannot be reached from here: this is the real client failing, not a mock.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", "hf_DONOTPRINT999")
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    recipe = load_recipe(None, [f"training.output_dir={tmp_path}", "hub.push=true", "hub.model_id=someone/tiny"],
                         default=ROOT / "recipes" / "pretrain" / "default.yaml")
    with caplog.at_level(logging.ERROR, logger="toolkit"):
        outcome = push_run(recipe)
    assert outcome.startswith("push failed (model saved locally)")
    assert f"hf upload someone/tiny {tmp_path}" in outcome
    assert "hf_DONOTPRINT999" not in caplog.text + outcome
    assert (tmp_path / "model.safetensors").read_bytes() == b"weights"
