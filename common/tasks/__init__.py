"""Task modules, one per task. Importing this package imports every module in it, which registers
each task with robosuite (by class name) and with the kit (`common.env.TASKS`).

A task module defines a `KitTask` subclass decorated with `@register_task` and a
`scripted_demo(env, seed, rng, record=True) -> Demonstrator` function (the source demonstrator).
"""
import importlib
import pkgutil

for _m in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_m}")
