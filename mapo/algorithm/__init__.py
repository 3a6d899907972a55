"""The algorithm: advantage estimators, policy losses and their validated config (torch only)."""
