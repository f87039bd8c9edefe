"""Configuration problems in plain words: where each bad value was set, no pydantic
internals, a "did you mean" for a misspelt option."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.helpers import PYTHON, TOKEN, bridge_env

from bridge.config import settings as config
from bridge.exceptions import ConfigError


def problems(path: Path | None = None, **kwargs: object) -> dict[str, str]:
    with pytest.raises(ConfigError) as err:
        config.load(path, **kwargs)  # type: ignore[arg-type]
    return dict(err.value.problems)


def test_a_union_is_one_reason_in_plain_words_with_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f'[flespi]\ntoken = "{TOKEN}"\n\ndevices = "some"\n')
    found = problems(path)
    assert found == {"flespi.devices":
                     f"should be 'all' or a valid list ({path}, line 4)"}


def test_a_list_item_is_named_by_its_index_without_type_tags(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f'[flespi]\ntoken = "{TOKEN}"\ndevices = [1, "x"]\n')
    (key, reason), = problems(path).items()
    assert key == "flespi.devices[1]"
    assert "constrained" not in reason
    assert reason.endswith(f"({path}, line 3)")


def test_a_misspelt_option_or_section_gets_a_did_you_mean(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f'[flespi]\ntoken = "{TOKEN}"\ndevice = "all"\n\n[locl]\nhost = "x"\n')
    found = problems(path)
    assert found["flespi.device"] == f"unknown option; did you mean 'devices'? ({path}, line 3)"
    assert found["locl"] == f"unknown section; did you mean 'local'? ({path}, line 5)"


def test_value_errors_lose_pydantics_prefix(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f'[flespi]\ntoken = "{TOKEN}"\nextra_parameters = ["a/b"]\n')
    reason = problems(path)["flespi.extra_parameters"]
    assert reason == f"'a/b' is not a flespi parameter name ({path}, line 3)"


def test_a_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLESPI_BRIDGE_FLESPI__TOKEN", TOKEN)
    monkeypatch.setenv("FLESPI_BRIDGE_LOCAL__PORT", "eighty")
    reason = problems()["local.port"]
    assert reason.endswith("(environment variable FLESPI_BRIDGE_LOCAL__PORT)")
    assert reason.startswith("should be a valid integer")


def test_the_rest_header_form_of_the_token_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[flespi]\ntoken = "FlespiToken abc"\n')
    reason = problems(path)["flespi.token"]
    assert "without the \"FlespiToken \" prefix" in reason
    assert "abc" not in reason


def test_run_without_any_configuration_says_what_to_do() -> None:
    import subprocess

    result = subprocess.run([PYTHON, "-m", "bridge", "run"], capture_output=True, text=True,
                            env=bridge_env(), timeout=60)
    assert result.returncode == 2
    assert "No --config FILE was given" in result.stderr
    assert "FLESPI_BRIDGE_FLESPI__TOKEN" in result.stderr
    assert "Field required" not in result.stderr
