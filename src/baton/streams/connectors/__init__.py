"""Stream connectors: one module each, behind the interface in streams/base.py."""
