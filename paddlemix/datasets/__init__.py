"""Sources, mixing, encoding and batching of training data."""
