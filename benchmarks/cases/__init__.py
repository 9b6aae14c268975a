"""The benchmark cases, one module each: ``bench_<case>(...) -> list[Row]``."""
