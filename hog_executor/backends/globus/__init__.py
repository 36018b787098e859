"""The ``globus`` backend: bundles run as Globus Compute ``ShellFunction`` tasks."""

from .backend import GlobusBackend

__all__ = ["GlobusBackend"]
