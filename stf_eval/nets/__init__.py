"""Network architectures. Each builder takes (input_shape, num_classes, mean, std, **options)."""
