"""Trainers for the embedded default models (our small StyleGAN2 and its e4e-style encoder)."""
