"""Operations: the dev stack launcher, the `bmms` CLI, infrastructure processes and benchmarks."""
