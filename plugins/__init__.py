"""raresynth's built-in plugins.

Each subpackage is an ordinary plugin, registered through the ``raresynth``
entry-point group in ``pyproject.toml`` exactly as a third-party plugin is, and
using only raresynth's public API (``from raresynth import ...``).
"""
