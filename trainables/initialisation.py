"""The adapters' shared initialisation, rebuilt exactly, for the operators that merge deltas.

Training (:func:`trainables.train.train_domain_adapter`) seeds torch with ``training.seed``
right before ``model.add_adapter``, so every adapter of a store starts from the same weights.
Task arithmetic, TIES and DARE merge the deltas from that start; this module rebuilds it with
the same steps (same encoder, same seed, same adapter config) and caches it in the store as
``<store>/.init/<key>.safetensors``, keyed by a hash of base model, adapter config, seed and
the torch and ``adapters`` versions (another version may draw other initial weights).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from spaces.errors import StoreError
from trainables.model import adapter_config_for, load_encoder
from trainables.settings import Experiment
from trainables.store import ADAPTER_FILE, ADAPTER_NAME, AdapterStore

if TYPE_CHECKING:
    from torch import Tensor

logger = logging.getLogger(__name__)

INIT_DIR = ".init"


def init_fingerprint(experiment: Experiment) -> dict:
    """Returns what the initial adapter weights depend on: base model, adapter config, seed, versions."""
    import adapters
    import torch

    return {"base_model": experiment.base_model, "adapter": experiment.adapter.model_dump(),
            "seed": experiment.training.seed, "trust_remote_code": experiment.trust_remote_code,
            "torch": torch.__version__.split("+")[0], "adapters": adapters.__version__}


def init_cache_path(experiment: Experiment, store: str | os.PathLike | AdapterStore | None = None) -> Path:
    """Returns ``<store>/.init/<16 hex digits of the fingerprint's sha256>.safetensors``."""
    text = json.dumps(init_fingerprint(experiment), sort_keys=True)
    return _store_root(experiment, store) / INIT_DIR / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.safetensors"


def build_initial_adapter(experiment: Experiment) -> dict[str, Tensor]:
    """Returns the adapter weights training starts from, rebuilt with training's exact steps (no cache).

    ``load_encoder(base_model)``, ``torch.manual_seed(training.seed)``, ``model.add_adapter``
    with ``adapter_config_for(adapter)``, then ``save_adapter`` as training stores it, so the
    keys are those of every stored ``adapter.safetensors``. The caller's torch RNG state is
    left as it was.
    """
    import torch
    from safetensors.torch import load_file


    with torch.random.fork_rng(devices=[]):
        model, _ = load_encoder(experiment.base_model, trust_remote_code=experiment.trust_remote_code)
        torch.manual_seed(experiment.training.seed)
        model.add_adapter(ADAPTER_NAME, config=adapter_config_for(experiment.adapter))
    with tempfile.TemporaryDirectory() as folder:
        model.save_adapter(folder, ADAPTER_NAME, use_safetensors=True)
        return load_file(os.path.join(folder, ADAPTER_FILE))


def initial_adapter_weights(experiment: Experiment,
                            store: str | os.PathLike | AdapterStore | None = None) -> dict[str, Tensor]:
    """Returns the shared initial adapter weights of ``experiment``, from the store's cache or rebuilt.

    Args:
        experiment: the trials' :class:`~trainables.settings.Experiment` (reads ``base_model``, ``adapter``,
            ``training.seed``, ``trust_remote_code``, and ``store``/``ray.storage_path``
            when ``store`` is not given).
        store: the adapter store; default: the experiment's (``store``, else
            ``<ray.storage_path>/adapters``, as ``Config.store_path``).

    Returns:
        Parameter name -> CPU tensor, the keys of a stored ``adapter.safetensors``. A rebuild
        is written to :func:`init_cache_path` atomically (temporary file, then rename); an
        unreadable cache file is rebuilt; a store that cannot be written is only logged.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    path = init_cache_path(experiment, store)
    if path.is_file():
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            logger.warning("the cached initialisation %s cannot be read (%s); rebuilding it", path, exc)
    weights = build_initial_adapter(experiment)
    meta = {k: json.dumps(v) for k, v in init_fingerprint(experiment).items()}
    tmp = path.parent / f".tmp-{uuid.uuid4().hex[:8]}.safetensors"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: t.contiguous() for k, t in weights.items()}, str(tmp), metadata=meta)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        logger.warning("cannot cache the initialisation in %s (%s); it will be rebuilt next time", path.parent, exc)
    return weights


def check_init_matches(init: Mapping[str, Tensor], stored: Mapping[str, Tensor], domain: str) -> None:
    """Raises StoreError unless ``init`` has exactly the parameter names and shapes of ``domain``'s stored adapter."""
    only_init, only_stored = sorted(set(init) - set(stored)), sorted(set(stored) - set(init))
    if only_init or only_stored:
        example = (f"{only_stored[0]!r} is only in the stored adapter" if only_stored
                   else f"{only_init[0]!r} is only in the rebuilt initialisation")
        raise StoreError(f"the adapter of {domain!r} does not have the architecture that the config's base_model and "
                         f"adapter settings build ({example}; {len(only_init) + len(only_stored)} such names): "
                         "fix the config or retrain the store (`signmix train CONFIG --force`)")
    for key in sorted(stored):
        if tuple(init[key].shape) != tuple(stored[key].shape):
            raise StoreError(f"the adapter of {domain!r} has shape {tuple(stored[key].shape)} for {key!r} but the "
                             f"config's base_model and adapter settings build {tuple(init[key].shape)}: fix the "
                             "config or retrain the store (`signmix train CONFIG --force`)")


def _store_root(experiment: Experiment, store: str | os.PathLike | AdapterStore | None) -> Path:
    if isinstance(store, AdapterStore):
        return store.root
    return Path(store if store is not None else experiment.store)
