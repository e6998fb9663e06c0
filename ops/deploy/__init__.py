"""Running the whole platform on Docker Swarm: its images (images.py), the stack file (stack.yml) and
`bmms stack` (stack.py)."""
