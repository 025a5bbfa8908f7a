"""lifewatch: knows which process lives exist on a Linux node, from the kernel's event streams."""

__version__ = "0.1.0"
