"""The deployer actor (its deploy step arrives with a later issue)."""
