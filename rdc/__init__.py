"""The ``rdc`` command: the composition root that starts and manages the center.

It may import every package (core, domain packages, viewer); none of them
imports it.
"""
