"""Each group of a plan's front served in every serving option: one Ray Tune trial per group, in parallel.

A trial (:func:`trainables.serving_options.serving_options_trial`) builds the group's body
(the mixture its search chose), scores each option for each domain on validation (the
rescalers and TALL lambdas chosen there) and the chosen values on test: one model and one
set of tokenised splits for all of it. The driver then picks each group's option
(:func:`search.plan.serving_choice.choose_group_option`).
"""

from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from search.plan.bodies import group_name
from search.plan.partition import Group
from search.runtime import interrupts
from search.runtime.cluster import storage_uri
from search.runtime.trial_inputs import trial_resources
from spaces.errors import SignmixError

if TYPE_CHECKING:
    from search.settings.config import Config
    from spaces.spec import MixtureSpec
    from trainables.serving_options import DomainServing

logger = logging.getLogger(__name__)


def score_serving(cfg: Config, bodies: Mapping[Group, MixtureSpec], weights, init, *, options: Sequence[str],
                  name: str, splits: Sequence[str] = ("validation", "test"),
                  progress: Callable[[str], None] = logger.info) -> dict[Group, dict[str, dict[str, DomainServing]]]:
    """group -> option -> domain -> how it serves, for each group's body ``bodies[group]`` (targets: the group)."""
    from ray import tune

    from trainables.mixture_trial import share_adapter_weights
    from trainables.serving_options import SERVING_FILE, DomainServing, serving_options_trial

    if not bodies:
        return {}
    groups = sorted(bodies)
    progress(f"plan: serving options ({', '.join(options)}) of {len(groups)} group(s), one trial each")
    experiment = cfg.experiment(targets=sorted({d for g in groups for d in g}))
    trainable = tune.with_resources(tune.with_parameters(
        serving_options_trial, adapter_weights=share_adapter_weights(weights, init), experiment=experiment,
        store_root=os.path.abspath(cfg.store_path)), trial_resources(cfg))
    done = []

    class Progress(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            done.append(trial)
            progress(f"plan: serving options of {len(done)}/{len(groups)} group(s) scored")

    grid = interrupts.fit(tune.Tuner(
        trainable,
        param_space={"spec": tune.grid_search([bodies[g].to_dict() for g in groups]), "options": list(options),
                     "splits": list(splits)},
        tune_config=tune.TuneConfig(max_concurrent_trials=cfg.search.max_concurrent, reuse_actors=True),
        run_config=tune.RunConfig(name=name, storage_path=storage_uri(cfg), verbose=0, callbacks=[Progress()],
                                  failure_config=tune.FailureConfig(max_failures=cfg.search.max_failures))))
    out: dict[Group, dict[str, dict[str, DomainServing]]] = {}
    for result in grid:
        if result.error is not None:
            raise SignmixError(f"scoring the serving options of a group failed: "
                               f"{str(result.error).strip().splitlines()[-1]}")
        group = tuple(sorted(result.config["spec"]["targets"]))
        with result.checkpoint.as_directory() as folder:
            found = json.loads(open(os.path.join(folder, SERVING_FILE), encoding="utf-8").read())
        out[group] = {o: {d: DomainServing.from_dict(s) for d, s in per.items()} for o, per in found.items()}
    missing = [group_name(g) for g in groups if g not in out]
    if missing:
        raise SignmixError(f"no serving options came back for {missing}")
    return out
