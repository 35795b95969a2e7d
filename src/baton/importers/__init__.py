"""Models from other tools as Baton bundles: ``baton import mlflow DIR``
(:mod:`baton.importers.mlflow`). Reading another tool's files never imports that tool."""
