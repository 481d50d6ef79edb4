"""What you run: one module per job (its config and its run function), each behind a ray_jobs/ entrypoint and a CLI command."""
