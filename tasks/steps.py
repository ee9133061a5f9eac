"""Old home of the ``prepare-data`` tasks, now :mod:`tasks.prepare_steps` (re-exported until callers move)."""

from tasks.prepare_steps import *  # noqa: F401,F403 - re-export
from tasks.prepare_steps import PUBLISHED, publish_outputs, check_label_rejects  # noqa: F401 - re-export
