"""Multi-site emulation: embedded cohort, partitions, experiments and their report."""
