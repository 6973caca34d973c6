"""The payload of potwatch's `lmms_eval.models` entry point (pyproject.toml): `--model potwatch` names
the class in model.py, which lmms-eval imports only when a run asks for it. A function, so importing
this module never starts lmms-eval's own model registry (which loads the entry points, this one too)."""


def manifest():
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="potwatch", simple_class_path="potwatch.lmms.model.PotwatchLMMS")
