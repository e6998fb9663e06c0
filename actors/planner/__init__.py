"""The planner actor: the build registry (accepts builds, projects their status) and the plan step."""
