"""faceanonymixer: cancelable faces by key-controlled StyleGAN2 latent mixing (FaceAnonyMixer, IJCB 2025)."""

__version__ = "0.1.0"
