"""Where and how trials run: the Ray cluster (``cluster.py``), what a trial receives
(``trial_inputs.py``), evaluations kept in the store so no mixture is scored twice
(``kept_evaluations.py``), Ray Jobs on a remote cluster (``jobs.py``, ``job_paths.py``) and
Ctrl-C (``interrupts.py``). Imports only the settings below it.
"""
