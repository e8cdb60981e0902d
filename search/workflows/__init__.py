"""What a command does, end to end, over the layers below: train the store's adapters
(``adapter_training.py``), bring adapters in (``store_imports.py``), search mixtures
(``mixture_search.py``, its Ray Tune callback ``search_callbacks.py``, its conflict gate built in
``conflict_gate.py`` from the measures of ``conflict_measures.py``), confirm on test
(``confirmation.py``, its trials ``confirmation_passes.py``, its rule ``confirmation_decision.py``),
the study (``study.py``), a new domain's baselines (``new_domain.py``), fixed baselines
(``baselines.py``) and the export (``export.py``). Serving plans (``search/plan``), the reports
(``search/reporting``) and the command line sit above.
"""
