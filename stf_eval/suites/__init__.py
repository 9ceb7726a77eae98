"""Suite plugins, one per file. A suite reads predictions through the EvalContext and writes records."""
