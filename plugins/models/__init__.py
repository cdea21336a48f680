"""Built-in model adapters: one module per model family."""
