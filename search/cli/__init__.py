"""The ``signmix`` command line: argument parsing (``main.py``), the checks that run before a
command starts anything (``preflight.py``) and the offline demo (``demo.py``, ``demo_data.py``).

Nothing outside this package imports from it: the library below it never calls back up.
"""
