"""The settings fields of a tab, checked one field at a time so the page can put an error beside the
field it concerns, in the page's words (a field's label, not a command-line flag)."""

from __future__ import annotations

from potwatch.compression.policies.base import POLICIES, make_policy, policy_names
from potwatch.compression.quantized_kv import KV_BITS
from potwatch.errors import MemCapError, UserError

from potwatch.app.ui.sessions import TabSettings, cap_value
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


def check_fields(mem_cap, policy, fps, kv_bits) -> TabSettings:
    """The settings as the session takes them, or a SettingError for the first field that cannot work."""
    mem_cap = str(mem_cap or "").strip()
    if not mem_cap:
        raise SettingError("mem_cap", "The memory cap is empty; type a size such as 1MB or 400kB, or 'none'.")
    try:
        cap = cap_value(mem_cap)
    except MemCapError as error:
        raise SettingError("mem_cap", ui_words(error)) from None
    try:
        chosen = make_policy(str(policy or ""))
    except UserError:
        raise SettingError("policy", f"Pick a compression policy from the list (not '{policy}').") from None
    try:
        rate = float(fps)
    except (TypeError, ValueError):
        rate = float("nan")
    if not 0 < rate <= 30:
        raise SettingError("fps", "Frames per second must be a number above 0 and at most 30; try 2.")
    bits = str(kv_bits).strip()
    if bits not in {str(b) for b in KV_BITS}:
        raise SettingError("kv_bits", f"Pick 16, 8 or 4 bits per key/value (not '{bits}').")
    bits = int(bits)
    if bits != 16 and cap is None:
        raise SettingError("kv_bits", f"{bits} bits per key/value need a memory cap (a quantised cache never grows); "
                                      "type a cap or pick 16.")
    if bits != 16 and chosen.slot_counts:
        raise SettingError("kv_bits", f"The policy {chosen.name} needs 16 bits per key/value (it keeps tokens per "
                                      "head, which a quantised cache cannot); pick 16 or the policy tar_van.")
    return TabSettings(mem_cap=mem_cap, policy=chosen.name, fps=rate, kv_bits=bits).checked()


def reset_error(error: UserError) -> SettingError:
    """An error from resetting the session with checked settings, placed on the field it concerns: once
    each field is fine alone, what is left is a cap too small for the model (or for the frames)."""
    if isinstance(error, SettingError):
        return error
    return SettingError("mem_cap", ui_words(error))
