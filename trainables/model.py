"""Building encoders with adapters, and the per-process cache of base models."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from spaces.errors import UsageError
from trainables.settings import ADAPTER_METHODS, AdapterConfig

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


def adapter_config_for(adapter: AdapterConfig):
    """The ``adapters`` config object for our adapter settings (``Config.adapter``)."""
    return ADAPTER_METHODS[adapter.method](adapter)


def trial_device(gpu: float | None = None) -> "torch.device":
    """The device a trial's model runs on in this process: ``cuda`` when it may use a GPU, else ``cpu``.

    ``gpu`` is the trial's ``resources.gpu``. A trial that asked for no GPU runs on the CPU
    even when the machine has one: in the Ray signmix pins (2.60), a worker with no GPU
    assigned still sees every GPU (Ray no longer empties ``CUDA_VISIBLE_DEVICES`` for it,
    ray-project/ray#54868), so "CUDA is available" alone would put such trials on GPUs
    that Ray never gave them. A trial with ``gpu > 0`` gets ``cuda``, the first visible
    device, which is the one Ray assigned (Ray sets ``CUDA_VISIBLE_DEVICES`` for it; four
    trials with ``gpu: 0.25`` share one GPU). ``None`` (outside a trial): ``cuda`` wherever
    torch sees one.
    """
    import torch

    if gpu is not None and gpu <= 0:
        return torch.device("cpu")
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def model_device(model) -> "torch.device":
    """The device of ``model``'s parameters (``cpu`` for a model without any)."""
    import torch

    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def load_encoder(base_model: str, *, trust_remote_code: bool = False):
    """A fresh ``AutoAdapterModel`` and its tokenizer, from a hub id or a local folder."""
    from adapters import AutoAdapterModel
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(base_model, trust_remote_code=trust_remote_code)
        model = AutoAdapterModel.from_pretrained(base_model, trust_remote_code=trust_remote_code)
    except OSError as exc:
        hint = "" if os.path.isdir(base_model) else (
            " If this machine is offline, point base_model at a local folder holding the model.")
        raise UsageError(f"base_model {base_model!r} cannot be loaded: {str(exc).splitlines()[0]}.{hint}") from exc
    model.eval()
    return model, tokenizer


_TOKENIZERS: dict[tuple, "PreTrainedTokenizerBase"] = {}


def cached_tokenizer(base_model: str, *, trust_remote_code: bool = False):
    """The tokenizer of ``base_model``, loaded once per process."""
    from transformers import AutoTokenizer

    key = (base_model, trust_remote_code)
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = AutoTokenizer.from_pretrained(base_model, trust_remote_code=trust_remote_code)
    return _TOKENIZERS[key]
