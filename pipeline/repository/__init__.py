"""The Triton model repository: what a published version is and how it is written and switched.

    repo = open_repository("triton_repo")        # a directory, or s3://bucket/prefix
    publish_bundle(bundle_dir, repo, "llm", facts=facts, server_url=url)   # publish.py
    rollback(repo, "llm", server_url=url)

Modules:
  base      ModelRepository: the interface, and everything written once over it
  uri       open_repository(): the backend a URI names
  local     DirectoryRepository: a directory on this host (temporary name + rename)
  s3        S3Repository: s3://bucket/prefix (objects first, config.pbtxt last)
  render    render_version(): the Triton models of one version, from the bundle manifest
            (layouts: layout_ifb, layout_llmapi; shared types: rendered; config text: pbtxt)
  parallel  orchestrator-mode environment for multi-GPU engines
  history   history.json: bundle and store of each version (rollback of pruned versions)
  publish   publish_bundle(), rollback(), prune(): the switch strategies side-by-side/drain/rolling
  switch    switch_version(): zero-downtime switch with restore on failure
  failpoints  step(): named fault-injection points at every write (TRTBUILD_FAILPOINT)
  lease     the writer lease per model: a flock'd file (directory), a conditional-PUT object (S3)
"""

from pipeline.repository.base import ModelRepository, RepositoryError
from pipeline.repository.uri import open_repository

__all__ = ["ModelRepository", "RepositoryError", "open_repository"]
