"""Contract tests for mixers and scan kernels, for built-ins and third-party plugins alike."""
