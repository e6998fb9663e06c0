"""The Docker fixtures of the backend tests (the Engine, the runner images, a single-node swarm) for the
end-to-end tests too."""

from tests.actors.deployer.conftest import docker, runner_images, swarm

__all__ = ["docker", "runner_images", "swarm"]
