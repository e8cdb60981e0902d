"""Reading an experiment back out of MLflow: the best mixtures (``results.py``), the report's
data, figures and statistics (``report.py``, ``report_data.py``, ``report_figures.py``) and
plain text tables (``tables.py``)."""
