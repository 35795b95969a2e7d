"""Monitoring: metrics for IT, quality and drift for data scientists."""
