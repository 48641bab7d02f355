"""What a rule does with a matched event: one module per kind of action."""
