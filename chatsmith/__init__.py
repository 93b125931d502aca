"""chatsmith: build your own ChatGPT-style model from scratch."""

__version__ = "0.1.0"
