"""What the machine offers: an accelerator (CUDA or Apple MPS) or only CPU cores."""

from __future__ import annotations

import torch


def has_accelerator() -> bool:
    return torch.cuda.is_available() or torch.backends.mps.is_available()


def bf16_supported() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
