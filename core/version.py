"""The package version, in one place (``raresynth --version``, benchmark records)."""

__version__ = "0.1.0"
