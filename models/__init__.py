"""Model families behind one adapter surface. Importing the package registers the built-in families
(models/families/), so the registry in models/family.py is complete before any of its modules is used."""

from potwatch.models import families as _built_in_families  # noqa: F401 - registers them, in order
