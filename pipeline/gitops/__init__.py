"""GitOps: which recipes a commit range changes (for a CI build matrix), and desired-state
files that `trtbuild sync` reconciles a Triton model repository to."""
