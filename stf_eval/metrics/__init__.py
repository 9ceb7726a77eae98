"""Pure metric functions on numpy arrays: no models, no I/O."""
