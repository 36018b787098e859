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


# -- bad values refused early -------------------------------------------------------------------

SLURM_TABLE = {"cluster": {"backend": "slurm", "partition": "debug", "walltime": 60}}


@pytest.mark.parametrize(
    ("name", "key", "value"),
    [
        ("local", "env", {"A": "x\x00y"}),
        ("local", "worker_init", "module load a\x00b"),
        ("local", "worker_init", ["ok", "bad\x00"]),
        ("local", "cache_dir", "/scratch/a\x00b"),
        ("local", "requires_python", ">=3.10\x00"),
        ("slurm", "shared_dir", "/shared/a\x00b"),
        ("slurm", "sbatch_flags", ["--exclusive\x00"]),
        ("slurm", "partition", "debug\x00"),
    ],
)
def test_nul_in_any_value_is_refused(name, key, value):
    with pytest.raises(ConfigError) as info:
        resolve(name, kwargs={key: value})
    assert key in str(info.value)


def test_nul_is_refused_per_call_and_in_tables_too():
    ep = resolve("local")
    with pytest.raises(ConfigError, match="NUL"):
        ep.with_overrides({"env": {"A": "\x00"}}, backend_keys("local"))
    with pytest.raises(ConfigError, match="NUL"):
        resolve("anvil", script_tables={"anvil": {"backend": "local", "worker_init": "\x00"}})
    with pytest.raises(ConfigError, match="not a valid environment variable name"):
        resolve("local", kwargs={"env": {"A\x00B": "1"}})


def test_an_environment_value_over_128_kib_is_refused():
    limit = 128 * 1024
    fits = "x" * (limit - len("BIG=") - 1)  # NAME=value and its NUL: exactly the limit
    assert resolve("local", kwargs={"env": {"BIG": fits}}).values["env"]["BIG"] == fits
    with pytest.raises(ConfigError, match="send data as an argument") as info:
        resolve("local", kwargs={"env": {"BIG": fits + "x"}})
    assert len(str(info.value)) < 600  # the value itself is not quoted whole
    with pytest.raises(ConfigError, match="128 KiB"):
        resolve("local").with_overrides({"env": {"BIG": "é" * limit}}, backend_keys("local"))


@pytest.mark.parametrize("path", ["hog-cache", "./cache", "../cache", "~user/cache", ""])
def test_relative_cache_dir_is_refused(path):
    with pytest.raises(ConfigError, match="absolute path"):
        resolve("local", kwargs={"cache_dir": path})


def test_absolute_and_home_cache_dirs_are_kept():
    assert resolve("local", kwargs={"cache_dir": "/scratch/me"}).values["cache_dir"] == \
        "/scratch/me"
    assert resolve("local", kwargs={"cache_dir": "~"}).values["cache_dir"] == "~/"


def test_backend_argument_naming_no_installed_backend_is_refused():
    with pytest.raises(ConfigError, match="executor arguments: backend = 'pbs': no backend "
                                          "named 'pbs' is installed"):
        resolve("local", kwargs={"backend": "pbs"})
    with pytest.raises(ConfigError, match="expected a backend name"):
        resolve("local", kwargs={"backend": ""})
    with pytest.raises(ConfigError, match="script: backend = 3"):
        resolve("cluster", script_tables={"cluster": {"backend": 3}})


def test_backend_argument_selects_the_backend_and_says_so():
    ep = resolve("cluster", script_tables={"cluster": {"backend": "slurm", "walltime": 60}},
                 kwargs={"backend": "local"})
    assert ep.backend == "local" and ep.values["backend"] == "local"
    assert ep.sources["backend"] == "executor arguments"
    assert ep.values["walltime"] == 60.0 and ep.sources["walltime"] == "script"
    # without the argument, the table decides, and says so
    ep = resolve("cluster", script_tables=SLURM_TABLE)
    assert (ep.backend, ep.sources["backend"]) == ("slurm", "script")


def test_backend_argument_with_keys_the_chosen_backend_lacks_is_explained():
    with pytest.raises(ConfigError) as info:
        resolve("cluster", script_tables=SLURM_TABLE, kwargs={"backend": "local"})
    message = str(info.value)
    assert "unknown key 'partition' for endpoint 'cluster'" in message
    assert "script sets it" in message
    assert "runs on the local backend (set by executor arguments)" in message


def test_executor_runs_on_the_backend_its_argument_selects(tmp_path, cache_dir):
    from hog_executor import HogExecutor
    from hog_executor.backends.local import LocalBackend

    script = tmp_path / "job.py"
    script.write_text('# /// script\n# dependencies = []\n# [tool.hog.cluster]\n'
                      '# backend = "slurm"\n# walltime = 60\n# ///\n')
    with HogExecutor("cluster", script=script, backend="local", cache_dir=cache_dir) as ex:
        assert isinstance(ex.backend, LocalBackend)
        assert ex.endpoint.backend == "local"
        assert ex.endpoint.sources["backend"] == "executor arguments"
        assert ex.endpoint.values["walltime"] == 60.0
