"""StyleGAN2 generator and discriminator with rosinality's parameter names."""
from .discriminator import Discriminator
from .generator import Generator

__all__ = ["Generator", "Discriminator"]
