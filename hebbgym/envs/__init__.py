"""The tasks, one module each, sharing :mod:`hebbgym.envs.base` and :mod:`hebbgym.envs.rendering`."""
