"""The built-in families, one module each (a `Family`, see models/family.py), registered in the order
they came to potwatch (which orders the demo names). Adding a family: write its module and add its name
at the end below."""

from importlib import import_module

from potwatch.models.family import register

BUILT_IN = ("qwen2_vl", "qwen2_5_vl", "llava_onevision", "smolvlm2", "qwen3_vl")

for _module in BUILT_IN:
    register(import_module(f"{__name__}.{_module}").FAMILY)
