"""Developer tooling, not a service: ``loraplex up`` (its flags, launcher, stack, supervisor, local servers),
the CLI, the demo-model writer and the scheduler simulator used by ``bench/fairbench`` and tests."""
