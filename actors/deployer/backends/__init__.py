"""Where runners run: one `Backend` interface, three implementations (docker, swarm, process)."""
