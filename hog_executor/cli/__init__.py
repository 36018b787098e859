"""The ``hog`` command (``python -m hog_executor``).

``app`` parses the command line and runs a subcommand; each subcommand's work lives in its
own module: ``harness`` (``hog run``), ``scripts`` (``hog init``, ``hog add``), ``bundles``
(``hog bundle``), ``envcache`` (``hog cache``) and ``doctor`` (``hog doctor``).
"""

from __future__ import annotations

from .app import build_parser, main
from .common import CliError

__all__ = ["CliError", "build_parser", "main"]
