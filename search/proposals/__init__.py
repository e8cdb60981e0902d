"""How mixtures are proposed and judged: the searcher behind the sign-conflict pre-filter
(``searcher.py``), the strategies that propose (``strategies.py``, local mutations in
``local_search.py``, the Optuna journal in ``optuna_storage.py``), the FSD gate (``fsd_gate.py``)
and the gate on other conflict measures (``measure_gate.py``), which decide with measures they
are given (computing them runs trials: ``search.workflows.conflict_gate``), and how many
validation examples the targets have (``validation_size.py``).
"""
