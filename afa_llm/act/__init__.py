"""ACT: attention-sink calibration, the exact head search, its log and its worker processes."""
