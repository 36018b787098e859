"""PEP 723 block parsing and validation."""

from __future__ import annotations

import pytest

from hog_executor.errors import ConfigError, MetadataError
from hog_executor.script import load_script, parse_metadata

GOOD = """\
#!/usr/bin/env python
# /// script
# requires-python = ">=3.10"
# dependencies = [
#   "numpy>=2",
#   "requests[socks] ; python_version >= '3.10'",
# ]
#
# [tool.uv]
# exclude-newer = "2025-01-01T00:00:00Z"
#
# [tool.hog.anvil]
# endpoint = "5aafb4c1-27b2-40d8-a038-a0277611868f"
# ///
print("hi")
"""


def test_parses_a_complete_block():
    meta = parse_metadata(GOOD)
    assert meta.has_block
    assert meta.requires_python == ">=3.10"
    assert meta.dependencies == ("numpy>=2", "requests[socks] ; python_version >= '3.10'")
    assert meta.tool_uv == {"exclude-newer": "2025-01-01T00:00:00Z"}
    assert meta.tool_hog == {"anvil": {"endpoint": "5aafb4c1-27b2-40d8-a038-a0277611868f"}}


def test_no_block_is_empty_metadata():
    meta = parse_metadata("print('no metadata')\n")
    assert not meta.has_block
    assert meta.dependencies == ()
    assert meta.requires_python is None


def test_other_block_types_are_ignored():
    meta = parse_metadata("# /// pyproject\n# x = 1\n# ///\n")
    assert not meta.has_block


def test_unclosed_block_names_the_line():
    with pytest.raises(MetadataError, match=r":2: '# /// script' block is not closed"):
        parse_metadata("import os\n# /// script\n# dependencies = []\nprint(1)\n")


def test_two_blocks_are_rejected():
    text = "# /// script\n# dependencies = []\n# ///\n\n# /// script\n# dependencies = []\n# ///\n"
    with pytest.raises(MetadataError, match="second '# /// script' block"):
        parse_metadata(text)


def test_invalid_toml_is_reported():
    with pytest.raises(MetadataError, match="not valid TOML"):
        parse_metadata("# /// script\n# dependencies = [\n# ///\n")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('# dependencies = "numpy"', "dependencies must be a list of strings"),
        ("# dependencies = [1]", "dependencies must be a list of strings"),
        ('# dependencies = ["numpy>>2"]', "not a valid requirement"),
        ('# requires-python = "three"', "is not a version specifier"),
        ("# requires-python = 3.10", "requires-python must be a string"),
        ('# name = "x"', "unknown key"),
        ("# tool = 1", "tool must be a table"),
    ],
)
def test_wrong_values_are_rejected(body, message):
    with pytest.raises(MetadataError, match=message):
        parse_metadata(f"# /// script\n{body}\n# ///\n")


def test_metadata_error_is_a_config_error():
    assert issubclass(MetadataError, ConfigError)


def test_load_script_rereads_a_changed_file(tmp_path):
    path = tmp_path / "s.py"
    path.write_text('# /// script\n# dependencies = ["a"]\n# ///\n')
    assert load_script(path).dependencies == ("a",)
    path.write_text('# /// script\n# dependencies = ["a", "bb"]\n# ///\n')
    assert load_script(path).dependencies == ("a", "bb")


def test_missing_script_is_a_clear_error(tmp_path):
    with pytest.raises(MetadataError, match="cannot read script"):
        load_script(tmp_path / "nope.py")
