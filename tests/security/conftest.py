"""The Docker fixtures of the backend tests (the Engine, the runner images) for the hostile-code suite."""

from tests.actors.deployer.conftest import docker, runner_images

__all__ = ["docker", "runner_images"]
