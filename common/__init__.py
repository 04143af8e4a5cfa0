"""Shared code of the ReinforceGen kit. Importing it registers the kit's tasks with robosuite."""
import os

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must be set before mujoco loads

from . import tasks  # noqa: E402,F401  (registers Threading_D2, ...)
from .env import TASKS, make_env  # noqa: E402,F401
