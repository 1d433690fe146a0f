"""The trainer subclass and its callbacks."""
