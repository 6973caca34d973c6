"""The settings fields of a tab, checked one field at a time so the page can put an error beside the
field it concerns, in the page's words (a field's label, not a command-line flag)."""

from __future__ import annotations

from potwatch.compression.policies.base import POLICIES, policy_names
from potwatch.errors import UserError
from potwatch.streaming.change_filter import DEFAULT_CHANGE_THRESHOLD

from potwatch.app.ui.sessions import TabSettings
from potwatch.app.ui.words import ui_words

FIELDS = ("mem_cap", "policy", "kv_bits", "fps", "ingest", "change_threshold")
LABELS = {"mem_cap": "Memory cap", "policy": "Compression policy", "kv_bits": "Bits per key/value",
          "fps": "Frames per second", "ingest": "Ingest", "change_threshold": "Change threshold"}
# What `Handlers.settings_outputs` gives, in order: the fields in force, the cap's description, each field's
# error; the ingest fields come last, so the outputs that were there before them keep their places.
SETTING_OUTPUTS = ("mem_cap", "policy", "fps", "kv_bits", "cap_words", *(f"{field}_error" for field in FIELDS),
                   "ingest", "change_threshold")
# (label, value) of the ingest dropdown: what reaches the language model of each new frame
INGEST_CHOICES = [("every token", "all"), ("only what changed", "changed")]


class SettingError(UserError):
    """A setting that cannot work; `field` is one of FIELDS."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def policy_choices() -> list[tuple[str, str]]:
    """(label, name) for the policy dropdown: each name with its one-line description from the registry."""
    return [(f"{name}: {POLICIES[name].description}" if POLICIES[name].description else name, name)
            for name in policy_names()]


def check_fields(mem_cap, policy, fps, kv_bits, cap_hint: str = "a size such as 1MB or 400kB, or none",
                 ingest="all", change_threshold=DEFAULT_CHANGE_THRESHOLD) -> TabSettings:
    """The settings as the session takes them, or a SettingError for the first field that cannot work,
    in the page's words (the checks themselves are `TabSettings.checked`'s). `cap_hint`: caps that work
    here, for the message of an empty cap."""
    mem_cap = str(mem_cap or "").strip()
    if not mem_cap:
        raise SettingError("mem_cap", f"The memory cap is empty; type {cap_hint}.")
    bits = str(kv_bits).strip()
    ingest = str(ingest or "").strip()
    try:
        return TabSettings(mem_cap=mem_cap, policy=str(policy or ""), fps=fps, kv_bits=bits, ingest=ingest,
                           change_threshold=_number(change_threshold)).checked()
    except UserError as error:
        field, rule = getattr(error, "setting", "mem_cap"), getattr(error, "rule", "value")
        words = _PAGE_WORDS.get((field, rule))
        raise SettingError(field, words.format(policy=policy, bits=bits, ingest=ingest) if words
                           else ui_words(error)) from None


def _number(value):
    """A number typed as text ('0.2') as a float; anything else as given, for the session's check to refuse."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


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
    ("ingest", "value"): "Pick what to ingest from the list: every token or only what changed (not '{ingest}').",
    ("change_threshold", "value"): "The change threshold must be a number from 0 to 10; try 0.15 (lower sends more "
                                   "tokens).",
}


def reset_error(error: UserError) -> SettingError:
    """An error from resetting the session with checked settings, placed on the field it concerns: once
    each field is fine alone, what is left is a cap too small for the model (or for the frames)."""
    if isinstance(error, SettingError):
        return error
    return SettingError("mem_cap", ui_words(error))
