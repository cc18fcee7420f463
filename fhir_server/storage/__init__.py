"""The I/O of the data: the guarded repository over MongoDB, its stores and the embedded database."""
