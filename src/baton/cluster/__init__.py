"""Baton on a Ray cluster: ``baton serve --ray`` (Ray Serve) and ``baton score --ray`` (Ray
Data), each replica or task running the bundle in its own environment as on one machine
(docs/scale.md). Ray is the optional extra ``baton[ray]``; nothing here imports it at
module level."""
