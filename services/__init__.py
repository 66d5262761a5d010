"""The shared kit: wire contract, subjects, capabilities, runtime adapters, simulator, CLI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("inferbus")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0.0.0"
