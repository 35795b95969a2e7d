"""The registry: bundles and their lifecycle, approvals, users and an append-only audit log."""
