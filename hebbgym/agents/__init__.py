"""Agents: the plastic recurrent core, baselines and reference policies."""
