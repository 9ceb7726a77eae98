"""HTML reports rendered from saved records and figures (never from models)."""
