"""Control plane: the CLI, the sweep driver, Ray, the stores and reports."""
