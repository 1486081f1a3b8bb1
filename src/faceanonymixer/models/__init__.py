"""Network architectures and checkpoint loaders (one file per architecture)."""
