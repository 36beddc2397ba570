"""invertkit: model-inversion attacks and defenses.

The repository root is the ``invertkit`` package (see ``pyproject.toml``): ``invertkit.core`` is the
small typed core, ``invertkit.plugins`` the bundled plugins, ``invertkit.cli`` the command line.
"""

__version__ = "0.1.0"
