"""File formats gemmax reads and writes itself, below every other package (numpy only)."""
