"""The synthetic driver: simulated devices for demos, load tests and benchmarks."""

from drivers.synthetic.driver import SyntheticDriver

__all__ = ["SyntheticDriver"]
