"""The ``batchcraft`` command: thin typer wrappers around library code."""
