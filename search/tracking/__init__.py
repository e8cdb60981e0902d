"""MLflow tracking of trainings and searches: the retrying client (``mlflow_client.py``), the
run layout of DESIGN.md (``tracker.py``) and the Ray Tune callbacks that fill it (``callbacks.py``)."""
