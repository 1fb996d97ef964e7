"""Long-context evaluation: tasks that generate token-exact prompts, and scorers."""
