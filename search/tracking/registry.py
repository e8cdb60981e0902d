"""Registering an export or a bundle as a model MLflow can load and serve.

The folder (adapters, heads, routing) becomes the artifact of an ``mlflow.pyfunc`` model
(:class:`search.tracking.served_model.ServedBundle`), logged as an MLflow 3 logged model of the run
it came from, with a signature and an input example; the model version points at it, carries a
description and the alias of its kind. Single mixtures and bundles live under different
registered model names (``Config.registered_model_name``, ``Config.registered_bundle_name``).
"""

from __future__ import annotations

import logging
import tempfile
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Iterator, Mapping

from search.tracking.layout import KIND_TAG
from spaces.errors import TrackingError, UsageError

logger = logging.getLogger(__name__)

# registered model kind -> (alias of its newest version, the registered model's description)
MODEL_KINDS: dict[str, tuple[str, str]] = {
    "mixture": ("best", "signmix: single merged adapters, each served for its target domains "
                        "(mlflow.pyfunc: inputs domain and text; outputs label, probabilities, error)"),
    "bundle": ("serving", "signmix: serving bundles, each domain routed to its merged body and head "
                          "(mlflow.pyfunc: inputs domain and text; outputs label, probabilities, error)"),
}
MODEL_ARTIFACT_NAME = "model"
EXAMPLE_TEXT = "An example request: the text of one row."


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def ensure_registered_model(client, name: str, description: str) -> None:
    """Create registered model ``name`` when missing.

    Raises:
        UsageError: MLflow refuses ``name`` (``mlflow.registered_model``).
        TrackingError: the model registry cannot be read.
    """
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "INVALID_PARAMETER_VALUE":
            raise UsageError(f"mlflow.registered_model {name!r} is refused by MLflow: {_first_line(exc)}; "
                             "choose another name in the config") from exc
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise TrackingError(f"MLflow could not read registered model {name!r}: {_first_line(exc)}") from exc
        client.create_registered_model(name, description=description)


def model_signature(example_domain: str):
    """The served model's signature and input example: ``domain``, ``text`` (``text_pair`` optional)
    in; ``label``, ``probabilities`` (class -> probability) and ``error`` out."""
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, DataType, Map, Schema

    inputs = Schema([ColSpec(DataType.string, "domain"), ColSpec(DataType.string, "text"),
                     ColSpec(DataType.string, "text_pair", required=False)])
    outputs = Schema([ColSpec(DataType.string, "label", required=False),
                      ColSpec(Map(DataType.double), "probabilities", required=False),
                      ColSpec(DataType.string, "error", required=False)])
    return ModelSignature(inputs=inputs, outputs=outputs), pd.DataFrame({"domain": [example_domain],
                                                                         "text": [EXAMPLE_TEXT]})


def _requirements() -> list[str]:
    """What the served model imports, pinned to this environment (signmix itself is installed beside it)."""
    found = []
    for package in ("mlflow", "torch", "transformers", "adapters", "pandas"):
        try:
            found.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            found.append(package)
    return found


@contextmanager
def _use_tracking_uri(uri: str) -> Iterator[None]:
    """``uri`` as the process's MLflow tracking URI while inside, the earlier one after."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    earlier = utils._tracking_uri  # None when never set: MLflow's default then applies again
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(earlier)


def register_served_model(client, *, name: str, kind: str, experiment_id: str, run_id: str, folder: str | Path,
                          example_domain: str, description: str, tags: Mapping[str, str]) -> dict:
    """Log ``folder`` as an ``mlflow.pyfunc`` model of run ``run_id`` and register it as a new version of
    ``name`` (``kind``: "mixture" or "bundle"), described, tagged (empty tags left out) and given its
    kind's alias. Returns ``{"name", "version", "alias", "model_uri", "model_id"}``."""
    import mlflow.pyfunc
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model

    from search.tracking.served_model import BUNDLE_ARTIFACT_KEY, ServedBundle

    if kind not in MODEL_KINDS:
        raise ValueError(f"kind must be one of {sorted(MODEL_KINDS)}, got {kind!r}")
    alias, model_description = MODEL_KINDS[kind]
    ensure_registered_model(client, name, model_description)
    tags = {KIND_TAG: kind, **{k: str(v) for k, v in tags.items() if v not in (None, "")}}
    logged = client.create_logged_model(experiment_id, name=MODEL_ARTIFACT_NAME, source_run_id=run_id, tags=tags)
    try:
        signature, example = model_signature(example_domain)
        with tempfile.TemporaryDirectory(prefix="signmix-model-") as tmp:
            local = Path(tmp) / MODEL_ARTIFACT_NAME
            mlflow.pyfunc.save_model(
                str(local), python_model=ServedBundle(), artifacts={BUNDLE_ARTIFACT_KEY: str(folder)},
                signature=signature, input_example=example, pip_requirements=_requirements(),
                mlflow_model=Model(artifact_path=logged.artifact_location, model_uuid=logged.model_id, run_id=run_id,
                                   model_id=logged.model_id))
            client.log_model_artifacts(logged.model_id, str(local))
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    except BaseException:
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        raise
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    # MLflow's registry looks the logged model up through the process's tracking URI, not the client's
    with _use_tracking_uri(client.tracking_uri):
        mv = client.create_model_version(name, source=f"models:/{logged.model_id}", run_id=run_id, tags=tags,
                                         description=description, model_id=logged.model_id)
    client.set_registered_model_alias(name, alias, mv.version)
    return {"name": name, "version": int(mv.version), "alias": alias, "model_uri": f"models:/{name}/{mv.version}",
            "model_id": logged.model_id}
