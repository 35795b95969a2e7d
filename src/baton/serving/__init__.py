"""Serving: transport-agnostic inference over worker pools."""
