"""The codegen actor (its generate step arrives with a later issue)."""
