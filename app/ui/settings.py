"""The settings fields of a tab, checked one field at a time so the page can put an error beside the
field it concerns, in the page's words (a field's label, not a command-line flag)."""

from __future__ import annotations

from potwatch.compression.policies.base import POLICIES, policy_names
from potwatch.errors import UserError

from potwatch.app.ui.sessions import TabSettings
from potwatch.app.ui.words import ui_words

FIELDS = ("mem_cap", "policy", "kv_bits", "fps")
LABELS = {"mem_cap": "Memory cap", "policy": "Compression policy", "kv_bits": "Bits per key/value",
          "fps": "Frames per second"}


class SettingError(UserError):
    """A setting that cannot work; `field` is one of FIELDS."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def policy_choices() -> list[tuple[str, str]]:
    """(label, name) for the policy dropdown: each name with its one-line description from the registry."""
    return [(f"{name}: {POLICIES[name].description}" if POLICIES[name].description else name, name)
            for name in policy_names()]


def check_fields(mem_cap, policy, fps, kv_bits, cap_hint: str = "a size such as 1MB or 400kB, or none") -> TabSettings:
    """The settings as the session takes them, or a SettingError for the first field that cannot work,
    in the page's words (the checks themselves are `TabSettings.checked`'s). `cap_hint`: caps that work
    here, for the message of an empty cap."""
    mem_cap = str(mem_cap or "").strip()
    if not mem_cap:
        raise SettingError("mem_cap", f"The memory cap is empty; type {cap_hint}.")
    bits = str(kv_bits).strip()
    try:
        return TabSettings(mem_cap=mem_cap, policy=str(policy or ""), fps=fps, kv_bits=bits).checked()
    except UserError as error:
        field, rule = getattr(error, "setting", "mem_cap"), getattr(error, "rule", "value")
        words = _PAGE_WORDS.get((field, rule))
        raise SettingError(field, words.format(policy=policy, bits=bits) if words else ui_words(error)) from None


# What the page says when a field cannot work, by (setting, rule) of the error; the cap's own sentence
# (ui_words of the session's) is already fit for the page.
_PAGE_WORDS = {
    ("policy", "value"): "Pick a compression policy from the list (not '{policy}').",
    ("fps", "value"): "Frames per second must be a number above 0 and at most 30; try 2.",
    ("kv_bits", "value"): "Pick 16, 8 or 4 bits per key/value (not '{bits}').",
    ("kv_bits", "needs_cap"): "{bits} bits per key/value need a memory cap (a quantised cache never grows); "
                              "type a cap or pick 16.",
    ("kv_bits", "per_head"): "The policy {policy} needs 16 bits per key/value (it keeps tokens per head, which a "
                             "quantised cache cannot); pick 16 or the policy tar_van.",
}


def reset_error(error: UserError) -> SettingError:
    """An error from resetting the session with checked settings, placed on the field it concerns: once
    each field is fine alone, what is left is a cap too small for the model (or for the frames)."""
    if isinstance(error, SettingError):
        return error
    return SettingError("mem_cap", ui_words(error))
