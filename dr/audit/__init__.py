"""Auditing a store: ``verify`` (every check), the summary ``info`` prints, ``show`` (a picture of
an image's stored views) and the label-agreement check.

This package reads stores; the build (:mod:`dr.builder`) never imports it, and it imports no Ray
and no build worker code. ``dr.audit.summary`` (``dr-build info``) imports neither torch nor Ray.
Modules: ``verify``, ``summary``, ``show``, ``agreement``.
"""
