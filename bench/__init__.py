"""Snapdesk benchmarks: `make bench` prints a table and one `name=value` line per figure."""
