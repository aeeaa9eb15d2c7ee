"""capgap: the Law of Capacity Gap in distilling language models, as a tool."""

__version__ = "0.1.0"
