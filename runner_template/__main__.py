"""`python -m runner_template`: serve the artifact named by BMMS_RUNNER_ARTIFACT."""

from runner_template.app import main

main()
