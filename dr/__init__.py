"""dr -- dataset reinforcement: build reinforced datasets once, train on them cheaply.

Importing ``dr`` is light: it imports neither Ray nor the build machinery.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
