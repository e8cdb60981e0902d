"""Reading an experiment back for a person: the best mixtures (``results.py``), the report's
data, figures and statistics (``report.py``, ``report_data.py``, ``report_figures.py``) and every
conflict measure against accuracy (``measures_report.py``)."""
