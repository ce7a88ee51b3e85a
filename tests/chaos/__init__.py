"""Fault injection on a real cluster: nemesis, workload, history, checker (see run.py)."""
