"""The bundle is generated text: read it. Its output parser is pure: feed it."""

from __future__ import annotations

import base64
import re
import subprocess

from hog_executor.bundle import BundleSpec, parse_output, render_bundle
from hog_executor.environment import EnvSpec, env_spec, render_metadata
from hog_executor.script import parse_metadata

ENV = EnvSpec(metadata="# /// script\n# dependencies = []\n# ///\n", python="3.11",
              runtime=("hog-executor @ file:///a%20b",), key="abc123",
              source_paths=("/path with space/x",))


def spec(**kw):
    return BundleSpec(env=ENV, **kw)


def embedded_files(text):
    files = {}
    for m in re.finditer(r"^hog_put (\S+) ([A-Za-z0-9+/=]*)$", text, re.M):
        files[m.group(1)] = base64.b64decode(m.group(2))
    return files


def test_files_travel_base64_and_roundtrip():
    source = "print('x')\nEOF\n'\"$(rm -rf ~)`x`{a}\n"
    text = render_bundle(spec(script_name="job.py", script_source=source), b"\x00payload\xff")
    files = embedded_files(text)
    assert files["job.py"].decode() == source
    assert files[".hog_payload"] == b"\x00payload\xff"
    assert b"SCRIPT_MODULE" in files[".hog_runner.py"]
    assert "rm -rf ~" not in text  # user text only appears encoded


def test_values_reaching_bash_are_quoted():
    text = render_bundle(
        spec(env_vars={"MSG": "it's $(danger) `x`"}, cache_dir="/tmp/my cache"), b""
    )
    assert "export MSG='it'\"'\"'s $(danger) `x`'" in text
    assert "export HOG_CACHE_DIR='/tmp/my cache'" in text
    assert "hog_runtime=('hog-executor @ file:///a%20b')" in text
    assert "hog_paths=('/path with space/x')" in text
    assert "hog_key=abc123" in text


def test_description_cannot_leave_its_comment_line():
    text = render_bundle(spec(description="a.py:f\ntouch /tmp/pwned #\r"), b"")
    assert "\ntouch /tmp/pwned" not in text
    assert text.splitlines()[1].endswith("a.py:f?touch /tmp/pwned #?")


def test_bundle_is_valid_bash():
    text = render_bundle(spec(script_name="a.py", worker_init="echo init", walltime=2.5), b"x")
    subprocess.run(["bash", "-n"], input=text.encode(), check=True)
    assert "hog_walltime=3" in text  # rounded up to whole seconds
    init = text.index("\necho init\n")
    assert init < text.index("hog_build_env()")  # module load & co. happen before the build


def test_bundle_without_walltime_has_no_limit():
    assert "hog_walltime=0" in render_bundle(spec(), b"")


def test_private_temp_dir_and_cleanup_trap():
    text = render_bundle(spec(), b"")
    assert "umask 077" in text
    assert "mktemp -d" in text
    assert "trap 'rm -rf \"$hog_tmp\"' EXIT" in text


def test_parse_output_finds_the_frame_among_user_text():
    marker = "f" * 32
    payload = base64.b64encode(b"outcomes").decode()
    out = (
        "user line\n@@HOG-RESULT fake@@\nQUJD\n@@HOG-END fake@@\n"
        f"\n@@HOG-RESULT {marker}@@\n{payload}\n@@HOG-END {marker}@@\n"
    )
    frame = parse_output(out.encode(), marker)
    assert frame.outcomes == b"outcomes"
    assert "user line" in frame.stdout
    assert marker not in frame.stdout


def test_parse_output_without_frame():
    frame = parse_output(b"just prints\n", "a" * 32)
    assert frame.outcomes is None
    assert frame.stdout == "just prints\n"


def test_parse_output_truncated_frame():
    marker = "b" * 32
    frame = parse_output(f"\n@@HOG-RESULT {marker}@@\nQUJD".encode(), marker)
    assert frame.outcomes is None


def test_env_key_depends_on_everything_that_shapes_the_env():
    a = env_spec(parse_metadata('# /// script\n# dependencies = ["six"]\n# ///\n'))
    b = env_spec(parse_metadata('# /// script\n# dependencies = ["six==1.16.0"]\n# ///\n'))
    c = env_spec(parse_metadata(
        '# /// script\n# dependencies = ["six"]\n# [tool.uv]\n# prerelease = "allow"\n# ///\n'))
    d = env_spec(parse_metadata('# /// script\n# dependencies = ["six"]\n# ///\n'),
                 extra_dependencies=("idna",))
    same = env_spec(parse_metadata('# /// script\n# dependencies = ["six"]\n# ///\nprint(1)\n'))
    assert len({a.key, b.key, c.key, d.key}) == 4
    assert same.key == a.key  # code changes do not rebuild environments


def test_rendered_metadata_is_valid_pep723():
    import datetime

    text = render_metadata(">=3.10", ("numpy", 'x ; python_version < "3.12"'),
                           {"exclude-newer": datetime.datetime(2025, 1, 1),
                            "index": [{"name": "n", "url": "https://e.invalid/simple"}]})
    meta = parse_metadata(text)
    assert meta.requires_python == ">=3.10"
    assert meta.dependencies == ("numpy", 'x ; python_version < "3.12"')
    assert meta.tool_uv["index"] == [{"name": "n", "url": "https://e.invalid/simple"}]
    assert meta.tool_uv["exclude-newer"] == datetime.datetime(2025, 1, 1)


def test_cloudpickle_is_pinned_to_the_client_version_unless_the_script_pins_it():
    import cloudpickle

    plain = env_spec(parse_metadata('# /// script\n# dependencies = ["six"]\n# ///\n'))
    assert f"cloudpickle=={cloudpickle.__version__}" in plain.runtime
    assert "cloudpickle" not in plain.metadata  # outside the script's resolver settings
    own = env_spec(parse_metadata('# /// script\n# dependencies = ["CloudPickle>=3"]\n# ///\n'))
    assert not any(r.startswith("cloudpickle") for r in own.runtime)


def test_an_editable_checkout_is_put_on_sys_path_not_built(monkeypatch):
    from hog_executor import environment

    root = str(__import__("pathlib").Path(environment.__file__).parent.parent)
    monkeypatch.setattr(environment, "runtime_requirements", lambda: ("-e", root))
    spec = env_spec(parse_metadata(""))
    assert not any("hog" in r for r in spec.runtime)
    assert spec.source_paths == (root,)
