"""Container images of a bundle, built with podman from a locally made Debian base.

Kept light: the modules that run inside the image (``entrypoint``, ``health``,
``inventory``, ``prepare``) import only what they need; the build is in ``build``.
"""
