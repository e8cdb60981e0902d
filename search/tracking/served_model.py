"""The ``mlflow.pyfunc`` face of a bundle or an exported mixture: what MLflow loads and serves.

A thin wrapper: :class:`trainables.bundle_predictor.BundlePredictor` does the work. Input: a
frame with the columns ``domain`` and ``text`` (``text_pair`` for pair tasks); output: one row
per input row with ``label``, ``probabilities`` (class name -> probability) and ``error``
(empty, or why the row has no prediction: a domain the model does not serve). A request
without the columns is refused whole with a message MLflow's server returns as HTTP 400.

Imported by MLflow when a registered model loads (its pickle names this module): keep it
importable without the workflows (``search/tracking`` only).
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import pandas as pd

BUNDLE_ARTIFACT_KEY = "bundle"  # the model's artifact: the bundle or export folder
INPUT_COLUMNS = ("domain", "text")


class ServedBundle(mlflow.pyfunc.PythonModel):
    """Predicts each row's label and class probabilities through its domain's body and head."""

    def load_context(self, context) -> None:
        from trainables.bundle_predictor import BundlePredictor

        self.predictor = BundlePredictor(context.artifacts[BUNDLE_ARTIFACT_KEY])

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        missing = [c for c in INPUT_COLUMNS if c not in frame.columns]
        if missing:
            raise MlflowException(f"the request lacks the column(s) {', '.join(missing)}: send rows with 'domain' "
                                  f"(one of {', '.join(self.predictor.domains)}) and 'text'",
                                  error_code=INVALID_PARAMETER_VALUE)
        pairs = list(frame["text_pair"]) if "text_pair" in frame.columns else None
        found = self.predictor.predict([str(d) for d in frame["domain"]], [str(t) for t in frame["text"]], pairs)
        # object columns: pandas 3 would read strings beside None as its string dtype, None as NaN
        return pd.DataFrame({"label": pd.Series([p.label for p in found], dtype=object),
                             "probabilities": pd.Series([p.probabilities for p in found], dtype=object),
                             "error": pd.Series([p.error for p in found], dtype=object)})
