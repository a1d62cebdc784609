"""Campus edge agent: durable store-and-forward from school devices to the district broker."""

__version__ = "0.2.0"
