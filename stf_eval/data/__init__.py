"""Dataset plugins (one per file) and the data plan that splits them into train/val/test + OOD sets."""
