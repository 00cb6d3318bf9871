"""The URL length cap is a typed, validated setting that reaches the io worker's fetchers."""

from __future__ import annotations

from pathlib import Path

import pytest

from lewis_tasks.errors import ConfigError
from lewis_tasks.infra.config import load_settings


def test_the_url_length_cap_defaults_to_8_kib(tmp_path: Path) -> None:
    assert load_settings(env={}, cwd=tmp_path).http.max_url_length == 8192
    assert (
        load_settings(env={"LEWIS_HTTP_MAX_URL_LENGTH": "2048"}, cwd=tmp_path).http.max_url_length
        == 2048
    )


@pytest.mark.parametrize("value", ["0", "-5", "lots"])
def test_a_bad_url_length_cap_is_one_config_error(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match="http.max_url_length"):
        load_settings(env={"LEWIS_HTTP_MAX_URL_LENGTH": value}, cwd=tmp_path)
