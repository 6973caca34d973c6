"""Compression policies, one per file: each class registers itself by its `name` (policies/base.py),
and the registry imports every module here on its first lookup, so there is no list to edit."""
