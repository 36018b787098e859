"""Endpoint resolution through every layer, and validation of every key."""

from __future__ import annotations

import pytest

from hog_executor.backends import backend_keys, backend_names
from hog_executor.config import parse_walltime, resolve_endpoint
from hog_executor.errors import ConfigError

SCRIPT_TABLES = {
    "anvil": {
        "backend": "local",
        "walltime": "00:10:00",
        "env": {"A": "script", "B": "script"},
        "gpu": {"walltime": 30, "env": {"B": "gpu"}},
        "cpu": {"max_workers": 1},
    }
}


def resolve(name, **kw):
    return resolve_endpoint(name, backend_keys=backend_keys, builtin_backends=backend_names, **kw)


def test_builtin_local_endpoint():
    ep = resolve("local")
    assert ep.backend == "local"
    assert ep.values == {"backend": "local"}


def test_script_table_and_variant_inherit():
    base = resolve("anvil", script_tables=SCRIPT_TABLES)
    assert base.values["walltime"] == 600.0
    assert base.values["env"] == {"A": "script", "B": "script"}
    gpu = resolve("anvil.gpu", script_tables=SCRIPT_TABLES)
    assert gpu.values["walltime"] == 30.0
    assert gpu.values["env"] == {"A": "script", "B": "gpu"}
    assert "max_workers" not in gpu.values  # a sibling variant's keys do not leak


def test_layers_later_wins(tmp_path, monkeypatch):
    user = tmp_path / "config.toml"
    user.write_text(
        '[anvil]\nbackend = "local"\nwalltime = 5\nmax_workers = 3\nenv = { U = "user" }\n'
    )
    monkeypatch.setenv("HOG_CONFIG_FILE", str(user))
    ep = resolve("anvil", script_tables=SCRIPT_TABLES, kwargs={"walltime": 7})
    assert ep.values["max_workers"] == 3  # only the user file sets it
    assert ep.values["walltime"] == 7.0  # kwargs beat script beat user file
    assert ep.sources["walltime"] == "executor arguments"
    assert ep.sources["max_workers"] == str(user)
    assert ep.values["env"] == {"U": "user", "A": "script", "B": "script"}
    view = ep.with_overrides({"walltime": 1, "env": {"A": "call"}}, backend_keys("local"))
    assert view.values["walltime"] == 1.0
    assert view.values["env"]["A"] == "call"
    assert ep.values["walltime"] == 7.0  # the original is untouched


def test_user_file_from_xdg_config_home(tmp_path, monkeypatch):
    monkeypatch.delenv("HOG_CONFIG_FILE")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    (tmp_path / "hog-executor").mkdir()
    (tmp_path / "hog-executor" / "config.toml").write_text('[mine]\nbackend = "local"\n')
    assert resolve("mine").backend == "local"


def test_unknown_endpoint_lists_known_names():
    with pytest.raises(ConfigError) as info:
        resolve("anvl", script_tables=SCRIPT_TABLES)
    text = str(info.value)
    assert "unknown endpoint 'anvl'" in text
    for name in ("local", "anvil", "anvil.gpu", "anvil.cpu"):
        assert name in text


def test_unknown_key_lists_known_keys():
    with pytest.raises(ConfigError, match=r"unknown key 'wallclock'.*walltime"):
        resolve("local", kwargs={"wallclock": 5})


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("walltime", -1, "walltime must be a positive number of seconds"),
        ("walltime", "ten minutes", "expected seconds"),
        ("env", {"1BAD": "x"}, "not a valid environment variable name"),
        ("env", ["A=1"], "expected a table"),
        ("max_workers", 0, "positive integer"),
        ("payload_limit", "lots", "expected bytes"),
        ("dependencies", "numpy", "expected a list"),
        ("dependencies", ["numpy>>1"], "not a valid requirement"),
        ("requires_python", "3.x", "not a version specifier"),
    ],
)
def test_invalid_values(key, value, message):
    with pytest.raises(ConfigError, match=message):
        resolve("local", kwargs={key: value})


def test_table_without_backend_is_explained():
    with pytest.raises(ConfigError, match="does not say which backend"):
        resolve("x", script_tables={"x": {"walltime": 3}})


def test_uuid_means_globus():
    ep = resolve("5aafb4c1-27b2-40d8-a038-a0277611868f")
    assert ep.backend == "globus"
    assert ep.values["endpoint"] == "5aafb4c1-27b2-40d8-a038-a0277611868f"


def test_per_call_override_of_backend_level_key_is_refused():
    ep = resolve("local")
    with pytest.raises(ConfigError, match="cannot change per call"):
        ep.with_overrides({"max_workers": 3}, backend_keys("local"))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(90, 90.0), (1.5, 1.5), ("90", 90.0), ("01:30", 90.0), ("1:00:00", 3600.0),
     ("1-00:00:01", 86401.0), ("1-02", 93600.0), ("1-02:00", 93600.0), ("2-0", 172800.0),
     (None, None)],
)
def test_walltime_formats(text, seconds):
    assert parse_walltime(text) == seconds  # the forms and meanings of Slurm's --time


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), 0, -5, "1-", "abc", "0:00", True])
def test_bad_walltimes_are_config_errors(bad):
    with pytest.raises(ConfigError, match="walltime"):
        resolve("local", kwargs={"walltime": bad})


def test_remote_error_survives_pickling():
    import pickle

    from hog_executor import RemoteError

    err = pickle.loads(pickle.dumps(RemoteError("pkg.Weird", "it broke", "Traceback ...")))
    assert (err.type_name, err.message, err.traceback) == ("pkg.Weird", "it broke",
                                                           "Traceback ...")


def test_payload_limit_units():
    ep = resolve("local", kwargs={"payload_limit": "2MiB"})
    assert ep.values["payload_limit"] == 2 * 1024 * 1024
    assert resolve("local", kwargs={"payload_limit": "10MB"}).values["payload_limit"] == 10**7


def test_executor_reads_tables_from_its_script(cache_dir):
    from conftest import SCRIPTS

    from hog_executor import HogExecutor

    with HogExecutor("site.short", script=SCRIPTS / "hogtest_basic.py", cache_dir=cache_dir) as ex:
        assert ex.endpoint.values["walltime"] == 5.0
        assert ex.endpoint.values["max_workers"] == 2
        assert ex.backend.workers == 2
        assert ex.endpoint.values["env"] == {"HOG_TEST_SITE": "site"}


def test_variant_inherits_its_parent_from_another_layer(tmp_path, monkeypatch):
    user = tmp_path / "config.toml"
    user.write_text('[anvil]\nbackend = "local"\nwalltime = 5\nenv = { U = "1" }\n')
    monkeypatch.setenv("HOG_CONFIG_FILE", str(user))
    ep = resolve("anvil.gpu", script_tables={"anvil": {"gpu": {"env": {"G": "2"}}}})
    assert ep.backend == "local"
    assert ep.values["walltime"] == 5.0
    assert ep.values["env"] == {"U": "1", "G": "2"}
    # a script-level parent value does not beat the variant's own value from the user file
    user.write_text('[anvil]\nbackend = "local"\n[anvil.gpu]\nwalltime = 9\n')
    ep = resolve("anvil.gpu", script_tables={"anvil": {"walltime": 1}})
    assert ep.values["walltime"] == 9.0


def test_cache_dir_keeps_tilde_for_the_remote_side():
    assert resolve("local", kwargs={"cache_dir": "~/hog"}).values["cache_dir"] == "~/hog"
