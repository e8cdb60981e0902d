"""The bottom layer of ``search/``: the experiment configuration, validated once from YAML into
frozen models (``config.py``; the ``search:`` section in ``search_section.py``; paths and
messages in ``loading.py``), and every name of a choice a config makes (``choices.py`` for the
choices implemented above this layer, ``objectives.py`` for what a search maximises).

Imports nothing else of ``search/``: every other layer may import it (DESIGN.md, "The layers of search/").
"""
