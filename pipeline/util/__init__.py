"""Small helpers shared by every concern: hashing, atomic writes, processes, ports."""
