"""Built-in plugins: vision encoders, sequence mixers, connectors."""
