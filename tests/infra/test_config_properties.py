"""Properties of the settings loader, over any environment and any YAML: only ConfigError
escapes, nothing out of range (or NaN, or infinite) is accepted, and every valid value
survives the trip through the environment and through a YAML file unchanged.

Examples per test come from the Hypothesis profile (tests/conftest.py).
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lewis_tasks.errors import ConfigError
from lewis_tasks.infra.config import MAX_NUMBER, MAX_SIZE, SECTIONS, Settings, load_settings

# (section, key, field, type hint) of every setting
FIELDS = [
    (section, f.name, f, typing.get_type_hints(cls)[f.name])
    for section, cls in SECTIONS.items()
    for f in dataclasses.fields(cls)
]
# keys another key constrains, or that are filled in when empty (load_settings's _resolve):
# left at their defaults here, and covered by tests/infra/test_config.py
_COUPLED = {
    ("monitoring", "ping_timeout"),
    ("monitoring", "health_check_interval"),
    ("tasks", "soft_time_limit"),
    ("tasks", "time_limit"),
    ("stack", "home"),
    ("database", "url"),
    ("broker", "visibility_timeout"),
    ("monitoring", "metrics_interval"),
    ("monitoring", "report_interval"),
    ("monitoring", "retention"),
    ("scaling", "io_min_workers"),
    ("scaling", "io_max_workers"),
    ("scaling", "cpu_min_workers"),
    ("scaling", "cpu_max_workers"),
}


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    """A directory without lewis.yaml or stack.json (module-scoped: Hypothesis reuses it)."""
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml's when built with it: faster
# The tests that write and parse a file per example run a fifth of the profile's examples
# (read when this module is imported, after tests/conftest.py loaded the profile): PyYAML's
# pure-Python parser made 10,000 of them take over a minute on a busy 2-core machine.
FILE_EXAMPLES = settings(max_examples=max(100, settings.default.max_examples // 5))


def _env_name(section: str, key: str) -> str:
    return f"LEWIS_{section.upper()}_{key.upper()}"


def _assert_in_range(settings: Settings) -> None:
    """Every number finite and inside its key's bounds; every choice and URL scheme allowed."""
    for section, key, f, hint in FIELDS:
        value = getattr(getattr(settings, section), key)
        meta = f.metadata
        if hint in (int, float):
            assert type(value) is hint, (section, key, value)
            assert math.isfinite(value), (section, key, value)
            lo, hi = meta.get("minimum"), meta.get("maximum")
            ceiling = MAX_SIZE if meta.get("size") else MAX_NUMBER
            assert (lo is None or value >= lo) and value <= (ceiling if hi is None else hi), (
                section,
                key,
                value,
            )
        if meta.get("choices"):
            assert value in meta["choices"]
        if meta.get("schemes") and value and (section, key) != ("broker", "url"):
            assert value.split("://", 1)[0].lower() in meta["schemes"]


# ---------------------------------------------------------------- strategies

SETTING_NAMES = st.sampled_from([_env_name(s, k) for s, k, _, _ in FIELDS])
NUMBERISH = st.one_of(
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(
        [
            "nan",
            "NaN",
            "-nan",
            "inf",
            "+inf",
            "-Infinity",
            "1e999",
            "1_000",
            "0x10",
            "١٢",
            "²",
            "٣.٥",
            " 7 ",
            "",
            "1e9",
            "1000000001",
            "512MB",
            "9" * 400 + "GB",
            "redis://h/0",
            "rediss://h/0",
            "foo://h/0",
            "unix:///tmp/s",
            "true",
            "0",
        ]
    ),
    st.text(max_size=12),
)


@given(
    env=st.dictionaries(
        st.one_of(
            SETTING_NAMES,
            st.just("LEWIS_VENV"),
            st.just("LEWIS_EXTRAS"),
            st.just("LEWIS_TEST_PROCESSES"),
            st.from_regex(r"LEWIS_[A-Z_]{0,12}", fullmatch=True),
        ),
        NUMBERISH,
        max_size=4,
    )
)
@example(env={"LEWIS_NETWORK_READ_TIMEOUT": "nan"})
@example(env={"LEWIS_CACHE_MAX_MEMORY": "9" * 400 + "GB"})
@example(env={"LEWIS_BROKER_URL": "foo://h/0"})
def test_any_environment_loads_in_range_settings_or_is_a_config_error(
    env: dict[str, str], workdir: Path
) -> None:
    try:
        settings = load_settings(env=env, cwd=workdir)
    except ConfigError as exc:
        assert str(exc)  # a message for a person, naming what is wrong
        return
    _assert_in_range(settings)


@st.composite
def valid_values(draw: st.DrawFn) -> dict[tuple[str, str], Any]:
    """Some settings with values their keys accept (the ones a person would write)."""
    # structured settings (alert rules) have tests of their own (tests/alerting)
    chosen = draw(
        st.lists(
            st.sampled_from(
                [
                    x
                    for x in FIELDS
                    if (x[0], x[1]) not in _COUPLED and not x[2].metadata.get("parse")
                ]
            ),
            min_size=1,
            max_size=5,
            unique_by=lambda x: (x[0], x[1]),
        )
    )
    values: dict[tuple[str, str], Any] = {}
    for section, key, f, hint in chosen:
        meta = f.metadata
        lo = meta.get("minimum")
        hi = meta.get("maximum")
        if meta.get("size"):
            value: Any = draw(st.integers(max(1, int(lo or 1)), MAX_SIZE))
        elif hint is bool:
            value = draw(st.booleans())
        elif hint is int:
            value = draw(
                st.integers(
                    int(lo if lo is not None else -MAX_NUMBER),
                    int(hi if hi is not None else MAX_NUMBER),
                )
            )
        elif hint is float:
            value = draw(
                st.floats(
                    lo if lo is not None else -MAX_NUMBER, hi if hi is not None else MAX_NUMBER
                )
            )
        elif meta.get("choices"):
            value = draw(st.sampled_from(meta["choices"]))
        elif meta.get("schemes"):
            first, last = meta["schemes"][0], meta["schemes"][-1]
            value = draw(
                st.sampled_from(
                    ["", f"{first}://127.0.0.1:6379/0", f"{last}://:pw@h.example:6380/1"]
                )
            )
        elif hint is str:
            value = draw(
                st.text(
                    st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=","),
                    max_size=10,
                )
            )
        else:  # tuple of strings: comma-separated in the environment
            value = tuple(
                draw(
                    st.lists(
                        st.text(
                            st.characters(
                                min_codepoint=33, max_codepoint=126, exclude_characters=","
                            ),
                            min_size=1,
                            max_size=8,
                        ),
                        max_size=3,
                    )
                )
            )
        values[(section, key)] = value
    return values


def _as_env_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(value)
    return repr(value) if isinstance(value, float) else str(value)


@given(values=valid_values())
def test_valid_values_survive_the_environment_unchanged(
    values: dict[tuple[str, str], Any], workdir: Path
) -> None:
    env = {_env_name(s, k): _as_env_text(v) for (s, k), v in values.items()}
    settings = load_settings(env=env, cwd=workdir)
    for (section, key), value in values.items():
        assert getattr(getattr(settings, section), key) == value, (section, key)
    _assert_in_range(settings)


@FILE_EXAMPLES
@given(values=valid_values())
def test_valid_values_survive_a_yaml_file_unchanged(
    values: dict[tuple[str, str], Any], workdir: Path
) -> None:
    document: dict[str, dict[str, Any]] = {}
    for (section, key), value in values.items():
        document.setdefault(section, {})[key] = list(value) if isinstance(value, tuple) else value
    path = workdir / "values.yaml"
    path.write_text(yaml.dump(document, Dumper=_DUMPER))
    settings = load_settings(env={}, path=path, cwd=workdir)
    for (section, key), value in values.items():
        assert getattr(getattr(settings, section), key) == value, (section, key)


YAML_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8))
YAML_VALUES = st.recursive(
    YAML_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
SECTION_NAMES = st.one_of(st.sampled_from([*SECTIONS, "performance"]), st.text(max_size=6))
KEY_NAMES = st.one_of(st.sampled_from(sorted({k for _, k, _, _ in FIELDS})), st.text(max_size=6))


@FILE_EXAMPLES
@given(
    document=st.one_of(
        YAML_VALUES,
        st.dictionaries(
            SECTION_NAMES,
            st.one_of(
                YAML_VALUES,
                st.dictionaries(
                    KEY_NAMES,
                    st.one_of(YAML_SCALARS, st.sampled_from(["nan", ".inf", "1e999", "١٢"])),
                    max_size=3,
                ),
            ),
            max_size=3,
        ),
    )
)
@example(document={"cache": [1], "performance": {"cache": {"enabled": True}}})
@example(document={"scan": {"timeout": float("nan")}})
@example(document={"scan": {"timeout": 10**400}})
def test_any_yaml_document_loads_in_range_settings_or_is_a_config_error(
    document: Any, workdir: Path
) -> None:
    path = workdir / "any.yaml"
    path.write_text(yaml.dump(document, Dumper=_DUMPER))
    try:
        settings = load_settings(env={}, path=path, cwd=workdir)
    except ConfigError as exc:
        assert str(exc)
        return
    _assert_in_range(settings)


@FILE_EXAMPLES
@given(raw=st.binary(max_size=64))
@example(raw=b"network:\n  max_connections: \xff\n")
@example(raw=b"[" * 3000)
def test_any_bytes_as_the_file_load_or_are_a_config_error(raw: bytes, workdir: Path) -> None:
    path = workdir / "raw.yaml"
    path.write_bytes(raw)
    try:
        settings = load_settings(env={}, path=path, cwd=workdir)
    except ConfigError:
        return
    _assert_in_range(settings)
