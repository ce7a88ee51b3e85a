"""The ``chorus`` command line (main.py) and the local cluster runner (cluster.py)."""
