"""One settings object, checked once: what `StreamSettings.from_user` takes and refuses, that the
command line, the web UI and `StreamSession(...)` refuse a setting in the same sentence, and that a
session checks every setting before it loads a model or changes a process-wide one."""

from __future__ import annotations

import pytest
import torch

from potwatch.app.cli import build_parser
from potwatch.app.ui.sessions import SessionPool, TabSettings
from potwatch.app.ui.settings import SettingError, check_fields
from potwatch.app.watch import WatchRun
from potwatch.errors import MemCapError, ModelLoadError, UserError
from potwatch.models.registry import resolve_dtype
from potwatch.streaming.session import StreamSession
from potwatch.streaming.settings import StreamSettings

SMALL_CAP = "400kB"


def refusal(make) -> UserError:
    with pytest.raises(UserError) as caught:
        make()
    return caught.value


def test_settings_read_what_users_write():
    settings = StreamSettings.from_user(mem_cap=" 2MB ", policy="window", fps="1.5", kv_bits="8", positions="compact",
                                        max_new_tokens=12, threads="auto", dtype="bf16")
    assert (settings.cap_bytes, settings.cap_is_auto, settings.policy, settings.fps, settings.kv_bits) == (
        2_000_000, False, "window", 1.5, 8)
    assert (settings.positions, settings.max_new_tokens, settings.threads, settings.dtype) == (
        "compact", 12, "auto", "bf16")
    for no_cap in (None, "none", "off", " Unlimited "):
        assert StreamSettings.from_user(mem_cap=no_cap).cap_bytes is None
    auto = StreamSettings.from_user(mem_cap="AUTO", kv_bits=4)
    assert auto.cap_is_auto and auto.cap_bytes is None and auto.kv_bits == 4  # 'auto' is a cap: 4 bits may go with it
    assert StreamSettings.from_user(dtype="").dtype is None


@pytest.mark.parametrize("given, setting, rule, sentence", [
    ({"mem_cap": "lots"}, "mem_cap", "value", "Memory cap 'lots' is not a size; write it like 2GB, 1.5GiB, 512MB, "
                                              "64MiB, 300kB or a number of bytes."),
    ({"policy": "nope"}, "policy", "value", "Unknown policy 'nope'; pick one of: "),
    ({"fps": 0}, "fps", "value", "The sampling rate 0 is not a positive number; give frames per second, e.g. 2."),
    ({"kv_bits": 5}, "kv_bits", "value", "--kv-bits 5 is not supported; use 16 (no quantisation), 8 or 4."),
    ({"kv_bits": 8, "mem_cap": "none"}, "kv_bits", "needs_cap",
     "--kv-bits 8 needs a memory cap (a quantised cache never grows); give --mem-cap or use --kv-bits 16."),
    ({"kv_bits": 8, "policy": "keep_merge"}, "kv_bits", "per_head", "Policy 'keep_merge' needs --kv-bits 16: "),
    ({"positions": "sideways"}, "positions", "value", "Unknown positions mode 'sideways'; use keep or compact."),
    ({"max_new_tokens": 0}, "max_new_tokens", "value",
     "The answer length 0 is not a whole number of tokens >= 1; give one like --max-new-tokens 48."),
    ({"threads": 0}, "threads", "value", "Threads 0 is not a whole number of at least 1; give one like --threads 2."),
    ({"threads": "many"}, "threads", "value", "Threads 'many' is not a number of threads; give a whole number, "
                                               "'auto' or None."),
    ({"dtype": "int8"}, "dtype", "value", "Unknown dtype 'int8'; use one of float32, bfloat16, float16."),
])
def test_each_refusal_is_one_sentence_naming_its_setting(given, setting, rule, sentence):
    error = refusal(lambda: StreamSettings.from_user(**given))
    assert str(error).startswith(sentence) and (error.setting, error.rule) == (setting, rule)


def test_the_dtype_sentence_is_the_model_loaders():
    """The settings refuse a dtype before the model loads; `load_model` still refuses it alone: one sentence."""
    with pytest.raises(ModelLoadError) as loader:
        resolve_dtype("int8", torch.device("cpu"), None)
    assert str(refusal(lambda: StreamSettings.from_user(dtype="int8"))) == str(loader.value)


def test_auto_is_refused_where_a_size_is_needed():
    error = refusal(lambda: StreamSettings.from_user(mem_cap="auto", auto_allowed=False))
    assert isinstance(error, MemCapError) and "A cap of 'auto' is not taken here" in str(error)


def test_changed_keeps_what_is_not_given_and_drops_options_of_another_policy():
    settings = StreamSettings.from_user(mem_cap="1MB", policy="keep_merge", policy_options={"candidates": "all"})
    same = settings.changed(fps=4)
    assert (same.cap_bytes, same.policy, same.policy_options, same.fps) == (
        1_000_000, "keep_merge", {"candidates": "all"}, 4.0)
    other = settings.changed(policy="window", mem_cap=None)
    assert (other.policy, other.policy_options, other.cap_bytes) == ("window", {}, None)
    assert StreamSettings.from_user(mem_cap="auto").changed(fps=1).cap_is_auto
    with pytest.raises(UserError, match="needs --kv-bits 16"):
        settings.changed(kv_bits=8)  # checked again, against the settings kept


@pytest.mark.parametrize("flags, api", [
    (["--kv-bits", "5"], {"kv_bits": 5}),
    (["--kv-bits", "8", "--policy", "keep_merge"], {"kv_bits": 8, "policy": "keep_merge"}),
    (["--mem-cap", "2XB"], {"mem_cap": "2XB"}),
    (["--max-new-tokens", "0"], {"max_new_tokens": 0}),
    (["--dtype", "int8"], {"dtype": "int8"}),
])
def test_the_command_line_and_the_api_refuse_in_one_sentence(flags, api, demo_adapter):
    args = build_parser().parse_args(["watch", "no-such-video.mp4", *flags])
    from_cli = refusal(lambda: WatchRun(args))  # before the video is opened or the model loaded
    assert str(from_cli) == str(refusal(lambda: StreamSettings.from_user(**api)))
    if "dtype" not in api:  # a session takes no dtype: its model is loaded already
        assert str(refusal(lambda: StreamSession(demo_adapter, **api))) == str(from_cli)


def test_the_page_puts_each_refusal_beside_its_field():
    cases = {
        ("lots", "tar_van", 2, 16): ("mem_cap", "Memory cap 'lots' is not a size"),
        ("auto", "tar_van", 2, 16): ("mem_cap", "A cap of 'auto' is not taken here"),
        ("1MB", "nope", 2, 16): ("policy", "Pick a compression policy from the list (not 'nope')."),
        ("1MB", "tar_van", 31, 16): ("fps", "Frames per second must be a number above 0 and at most 30; try 2."),
        ("1MB", "tar_van", 2, 5): ("kv_bits", "Pick 16, 8 or 4 bits per key/value (not '5')."),
        ("none", "tar_van", 2, 8): ("kv_bits", "8 bits per key/value need a memory cap"),
        ("1MB", "adakv", 2, 4): ("kv_bits", "The policy adakv needs 16 bits per key/value"),
    }
    for fields, (field, words) in cases.items():
        with pytest.raises(SettingError) as caught:
            check_fields(*fields)
        assert caught.value.field == field and str(caught.value).startswith(words), (fields, str(caught.value))
    expected = TabSettings(mem_cap="1MB", policy="window", fps=1.5, kv_bits=8)
    assert check_fields(" 1MB ", "window", "1.5", "8") == expected


def test_a_session_checks_every_setting_before_loading_or_setting_threads():
    before = torch.get_num_threads()
    try:
        # a bad cap is refused before the (unknown) model is looked for, and before threads=1 is applied
        with pytest.raises(MemCapError, match="'lots' is not a size"):
            StreamSession("no-such-model", mem_cap="lots", threads=1)
        assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)


def test_the_pool_and_a_session_built_from_settings_agree(demo_adapter):
    pool = SessionPool(demo_adapter, max_sessions=1, settings=TabSettings(mem_cap=SMALL_CAP, policy="window", fps=1),
                       max_new_tokens=6)
    session = pool.new_session(pool.settings)
    try:
        assert (session.cap_bytes, session.policy_name, session.fps, session.max_new_tokens) == (
            400_000, "window", 1.0, 6)
        assert session.positions_mode == demo_adapter.default_positions  # the family's choice, settled once
        session.reset(policy="tar_van", fps=2)
        assert (session.settings.policy, session.fps, session.cap_bytes) == ("tar_van", 2.0, 400_000)
        with pytest.raises(UserError, match="needs a memory cap"):
            session.reset(mem_cap=None, kv_bits=8)
        assert (session.cap_bytes, session.kv_bits) == (400_000, 16)  # a refused reset changes nothing
    finally:
        session.close()
