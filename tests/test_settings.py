"""Settings from the environment: parsed by each field's real type, every malformed value
refused with the variable it came from."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from click.testing import CliRunner

from baton.cli.main import main
from baton.errors import SettingsError
from baton.settings import Settings
from baton.streams.base import check_settings


def _from(**env: str) -> Settings:
    return Settings.from_env({f"BATON_{k.upper()}": v for k, v in env.items()})


@pytest.mark.parametrize("raw, value", [
    ("1", True), ("true", True), ("TRUE", True), ("Yes", True), ("on", True), (" on ", True),
    ("0", False), ("false", False), ("False", False), ("NO", False), ("off", False),
])
def test_booleans_take_the_usual_words_in_any_case(raw: str, value: bool) -> None:
    assert _from(metrics=raw).metrics is value
    assert _from(offline=raw).offline is value


@pytest.mark.parametrize("raw", ["flase", "y", "2", "enabled", "-"])
def test_a_mistyped_boolean_is_refused_not_read_as_false(raw: str) -> None:
    with pytest.raises(SettingsError) as caught:
        _from(metrics=raw)
    err = caught.value
    assert (err.code, err.exit_code, err.details["field"]) == ("INVALID_SETTING", 2, "metrics")
    assert f"BATON_METRICS={raw!r}" in err.message
    assert "1, true, yes, on, 0, false, no, off" in err.message


@pytest.mark.parametrize("field, raw", [
    ("port", "abc"), ("port", "80.5"), ("workers", "two"), ("approvals", ""),
    ("timeout", "soon"), ("timeout", "nan"), ("drain_timeout", "inf"),
    ("prediction_log_sample", "-inf"), ("archive_max_ratio", "1e999"),
])
def test_numbers_must_parse_and_be_finite(field: str, raw: str) -> None:
    if raw == "":  # an empty variable counts as unset, not as a bad number
        assert _from(**{field: raw}) == Settings()
        return
    with pytest.raises(SettingsError) as caught:
        _from(**{field: raw})
    assert f"BATON_{field.upper()}={raw!r} is not a" in caught.value.message
    assert caught.value.details["field"] == field


@pytest.mark.parametrize("field, raw", [
    ("workers", "-1"), ("timeout", "-0.5"), ("load_timeout", "0"), ("port", "65536"),
    ("prediction_log_sample", "1.5"), ("prediction_log_days", "0"), ("quality_window", "0"),
    ("drift_interval", "0"), ("metrics_port", "-1"), ("archive_max_ratio", "0.5"),
])
def test_numbers_out_of_range_are_refused(field: str, raw: str) -> None:
    with pytest.raises(SettingsError, match=rf"setting {field} \(BATON_{field.upper()}\) "
                                            "must be"):
        _from(**{field: raw})


def test_values_are_parsed_into_their_types(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    monkeypatch.chdir(tmp_path)
    s = _from(port="9001", timeout="2.5", tls_cert="cert.pem", tls_key="key.pem",
              home="home", host="0.0.0.0", archive_max_files="12")
    assert (s.port, s.timeout, s.host, s.archive_max_files) == (9001, 2.5, "0.0.0.0", 12)
    # Paths, optional ones too, are absolute: they mean the same in a worker's folder.
    assert (s.tls_cert, s.tls_key, s.home) == (tmp_path / "cert.pem", tmp_path / "key.pem",
                                               tmp_path / "home")
    assert _from(wheelhouse="").wheelhouse is None


def test_every_field_can_be_set_from_its_variable() -> None:
    """A field of a type the parser does not know would fail here, not in production."""
    sample = {bool: "off", int: "7", float: "7.5", str: "x", Path: "/tmp/x"}
    for f in dataclasses.fields(Settings):
        default = getattr(Settings(), f.name)
        kind = type(default) if default is not None else Path
        kind = Path if isinstance(default, Path) else kind
        raw = sample[kind]
        try:
            value = _from(**{f.name: raw})
        except SettingsError as exc:  # a range or pairing rule, not the parser
            assert exc.message.startswith("setting "), exc.message
            continue
        assert getattr(value, f.name) == (Path(raw) if kind is Path else
                                          {"off": False}.get(raw, kind(raw)))


def test_a_command_default_yields_to_the_variable_and_the_option() -> None:
    own = {"port": 8700}
    assert Settings.from_env({}, defaults=own).port == 8700
    assert Settings.from_env({"BATON_PORT": "9000"}, defaults=own).port == 9000
    assert Settings.from_env({"BATON_PORT": "9000"}, defaults=own, port=9100).port == 9100
    assert Settings.from_env({}, defaults=own, port=None).port == 8700  # option not given


# -- stream URLs: checked by the streams package, which knows the schemes ------------------

def test_the_sink_url_is_checked_by_streams_not_by_settings() -> None:
    settings = _from(prediction_log_sink="ftp://example.com/x")  # settings knows no schemes
    with pytest.raises(SettingsError) as caught:
        check_settings(settings)
    assert caught.value.message.startswith(
        "setting prediction_log_sink (BATON_PREDICTION_LOG_SINK) must be a stream URL such as "
        "file:///PATH.jsonl or redis://HOST:PORT/STREAM, got 'ftp://example.com/x': unknown "
        "stream scheme")
    with pytest.raises(SettingsError, match=r"'redis://u:\*\*\*@127.0.0.1:6379': it names no"):
        check_settings(_from(prediction_log_sink="redis://u:hunter2@127.0.0.1:6379"))
    check_settings(_from(prediction_log_sink="file:///tmp/predictions.jsonl"))


@pytest.mark.parametrize("args", [["registry", "key"], ["pull", "m@1"], ["contract", "HERE"]])
def test_every_command_refuses_a_bad_setting_before_doing_anything(
        args: list[str], tmp_path: Path) -> None:
    """Settings are read the same way by every command, the registry's included."""
    runner = CliRunner()
    for env, says in [({"BATON_PREDICTION_LOG_SINK": "ftp://example.com/x"},
                       "setting prediction_log_sink (BATON_PREDICTION_LOG_SINK)"),
                      ({"BATON_OFFLINE": "flase"},
                       "environment variable BATON_OFFLINE='flase' is not a boolean")]:
        result = runner.invoke(main, [str(tmp_path) if a == "HERE" else a for a in args],
                               env={"BATON_HOME": str(tmp_path), **env})
        assert result.exit_code == 2, result.output
        assert f"error [INVALID_SETTING]: {says}" in result.output
