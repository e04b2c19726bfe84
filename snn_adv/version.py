"""The package's version, in a module of its own: setuptools reads it without importing the package, and modules
that record it (provenance, checkpoints, the CLI) import it without importing the package root."""
__version__ = "0.2.0"
