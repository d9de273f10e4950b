"""Built-in vision encoders, registered as a plugin (none yet: the multimodal work adds
timm ViTs and a tiny CPU preset through a ``register_encoders`` hook here)."""
