"""The comparison's runs: a profile's cells with their rate search and seeds (``sweep``), and a
finished cell rerun with flags changed (``rerun``). ``recipes/sweep.py`` and
``recipes/rerun.py`` are their commands; ``recipes/report/`` reads what they leave."""
