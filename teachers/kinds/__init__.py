"""One module per teacher kind, each with the builder of its specs (``KIND:NAME...``):
``timm``, ``torchvision``, ``program`` (``torchscript:`` and ``export:`` files) and ``python``
(``python:MODULE:FACTORY``). A builder takes a parsed spec and the local weights file (or
``None``) and returns a :class:`~dr.teachers.kinds.built.Built`; :mod:`dr.teachers.teacher`
keeps the kind -> builder table.
"""
