"""Model builder plugins, one per file, all behind the prediction contract of ``base.ModelPlugin``."""
