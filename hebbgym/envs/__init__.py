"""The tasks, one module each, on the shared machinery of ``base.py`` and ``rendering.py``."""
