"""How a search is launched and recorded, in layers, lowest first (DESIGN.md, "The layers of search/"):
settings < runtime < tracking < proposals < workflows < reporting < plan < cli. A module imports
its own layer and the ones below it; ``tests/test_structure.py`` fails on an arrow up."""
