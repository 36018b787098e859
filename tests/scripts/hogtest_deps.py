# /// script
# requires-python = ">=3.10"
# dependencies = ["six==1.16.0"]
#
# [tool.uv]
# exclude-newer = "2025-06-01T00:00:00Z"
# ///
"""A script with a real dependency from the package index."""


def six_version():
    import six

    return six.__version__
