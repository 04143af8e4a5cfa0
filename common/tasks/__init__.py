"""Task modules, one per task. Importing this package imports every module in it, which registers
each task with robosuite (by class name) and with the kit (`common.env.TASKS`).

A task module defines a `KitTask` subclass decorated with `@register_task` and a
`scripted_demo(env, seed, rng, record=True) -> Demonstrator` function (the source demonstrator).
A module that fails to import is reported with a warning and kept in `IMPORT_ERRORS`, so one
broken task (e.g. one you are editing) does not take the others down; the tests check it is empty.
"""
import importlib
import pkgutil
import warnings

IMPORT_ERRORS: dict[str, BaseException] = {}

for _m in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    try:
        importlib.import_module(f"{__name__}.{_m}")
    except Exception as e:  # noqa: BLE001 - reported, and failed by tests/test_tasks.py
        IMPORT_ERRORS[_m] = e
        warnings.warn(f"task module common/tasks/{_m}.py failed to import: {type(e).__name__}: {e}")
