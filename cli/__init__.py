"""The ``dr-build`` command line (click): parse, validate, call the library, print."""
