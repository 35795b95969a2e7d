"""The handoff report: one self-contained page (and its JSON) an approver reads before
approving a bundle. ``baton report`` writes it (:func:`baton.report.build.build_report`,
:func:`baton.report.build.write_report`); the registry keeps one per validated version.
See docs/report.md. Importing this package imports nothing else."""
