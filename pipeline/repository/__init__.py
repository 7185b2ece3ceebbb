"""The Triton model repository: one interface, a directory and an S3 backend, and writer leases."""
