"""Device selection, checkpoint I/O, logging and errors."""
