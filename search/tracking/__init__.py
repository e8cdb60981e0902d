"""MLflow, and the records a search writes: the layout, every tag and parameter name and the one
way back from a run to a spec (``layout.py``), the one rule that says what became of a trial
(``outcomes.py``), the retrying client (``mlflow_client.py``), the runs a search writes
(``tracker.py``), an experiment's runs read back (``experiment_runs.py``), the text tables and
the one CSV writer (``tables.py``), and the registered models MLflow loads and serves
(``registry.py``, ``served_model.py``: a thin ``mlflow.pyfunc`` wrapper of
``trainables/bundle_predictor.py``). Imports only the settings and runtime below it.
"""
