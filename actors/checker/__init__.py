"""The checker actor (its check step arrives with a later issue)."""
