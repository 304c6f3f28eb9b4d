"""Publishing a finished run to the Hugging Face Hub."""

from __future__ import annotations

import logging

from toolkit.errors import first_line
from toolkit.recipe import Recipe

logger = logging.getLogger("toolkit")


def push_run(recipe: Recipe) -> str:
    """Upload the output folder (checkpoints left out); on failure, say how to push later.

    The model is already saved locally, so a failed push costs nothing but a retry.
    """
    from huggingface_hub import HfApi

    hub, folder = recipe.hub, recipe.output_dir
    later = f"hf upload {hub.model_id} {folder} . --exclude 'checkpoint-*/*'"
    try:
        api = HfApi(token=hub.token or recipe.training.get("hub_token"))  # None: HF_TOKEN or the stored login
        api.create_repo(hub.model_id, private=hub.private, exist_ok=True)
        api.upload_folder(repo_id=hub.model_id, folder_path=str(folder), ignore_patterns=["checkpoint-*", "runs/*"])
    except Exception as err:  # no token, no network, no rights: the model stays saved locally
        logger.error("push to %s failed: %s; the model is saved in %s; push it later with: %s", hub.model_id, first_line(err), folder, later)
        return f"push failed (model saved locally); later: {later}"
    return f"https://huggingface.co/{hub.model_id}"
