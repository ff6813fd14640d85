"""Data: loading local, packaged and hub data sets into seeded splits, and planted shortcuts."""
