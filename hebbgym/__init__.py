"""hebbgym: learning-to-learn Gymnasium tasks and neuromodulated Hebbian A2C agents.

Importing the package registers every ``Hebb-*`` environment id with Gymnasium.
"""

from hebbgym.envs.registration import ENVIRONMENTS, register_all

register_all()

ENV_IDS: tuple[str, ...] = tuple(ENVIRONMENTS)

__all__ = ["ENV_IDS"]
__version__ = "0.1.0"
