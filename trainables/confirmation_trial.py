"""The confirmation trial: a few fixed mixtures, each evaluated once, example by example.

At the end of a search the driver asks for the chosen mixture and the baselines (each
target's own adapter, the soup of all, greedy's pick) on each target's *test* split, and
for the mixtures the tie rule compares on the *validation* split. This trial builds each
mixture with the search trial's own code (:func:`trainables.mixture_trial.load_mixture`) and
predicts with :func:`trainables.evaluate.predict`, so its numbers are the search's numbers
on another split. It reports per-example correctness (1 right, 0 wrong) in a checkpoint
file, ``correctness.json``: ``{candidate: {split: {target: [0/1, ...]}}}``; the statistics
are the driver's (:mod:`search.workflows.confirmation`). With ``search.blackbox_attack`` on, a candidate
evaluated on test is also attacked there: its ``blackbox_test`` entry holds, per target,
whether each attacked row is still right after the attack (the same rows for every candidate).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Mapping

from spaces.spec import MixtureSpec
from trainables.blackbox_attack import attack_targets
from trainables.example_correctness import BLACKBOX_TEST
from trainables.evaluate import encoded_split, mixture_model, predict
from trainables.mixture_trial import load_mixture
from trainables.settings import Experiment

CORRECTNESS_FILE = "correctness.json"


def confirm_candidates(config: Mapping, *, adapter_weights: Mapping, experiment: Experiment, store_root: str) -> None:
    """Evaluate each of ``config["candidates"]`` (name -> ``{"spec": ..., "splits": [...]}``, and
    ``"targets"`` when only some of the spec's targets are this trial's) once on its targets'
    splits; reports the per-example correctness as a checkpoint."""
    import torch
    from ray import tune


    torch.set_num_threads(max(1, int(experiment.resources.cpu)))
    model = mixture_model(experiment, store_root)  # cached per worker process, like the search's
    batch_size = experiment.evaluation.batch_size
    correctness: dict[str, dict[str, dict[str, list[int]]]] = {}
    for name, candidate in config["candidates"].items():
        # "targets": the part of the mixture's targets this trial evaluates (a long pass split
        # across trials); the mixture is the same whichever targets its heads are read for.
        spec = MixtureSpec.from_dict({**candidate["spec"], **({"targets": candidate["targets"]}
                                                              if candidate.get("targets") else {})})
        load_mixture(model, spec, adapter_weights, experiment)  # refits the heads under head: refit
        per_split: dict[str, dict[str, list[int]]] = {split: {} for split in candidate["splits"]}
        for target in spec.targets:
            model.use_head(target)
            for split in candidate["splits"]:
                enc = encoded_split(experiment, target, split, model.label_names[target])
                preds = predict(model.model, enc, batch_size)
                per_split[split][target] = [int(preds[row] == enc.labels[row]) for row in range(len(enc))]
        if experiment.evaluation.blackbox_attack is not None and "test" in candidate["splits"]:
            per_split[BLACKBOX_TEST] = attack_targets(model, spec.targets, experiment, split="test")[2]
        correctness[name] = per_split
    with tempfile.TemporaryDirectory(prefix="signmix-confirm-") as tmp:
        Path(tmp, CORRECTNESS_FILE).write_text(json.dumps(correctness), encoding="utf-8")
        tune.report({"candidates": len(correctness)}, checkpoint=tune.Checkpoint.from_directory(tmp))
