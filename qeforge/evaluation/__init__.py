"""Quality-vs-Claude evaluation: scorers, sandbox, routing."""
