"""Runtime: the language-neutral worker protocol, the Python runner, workers and pools."""
