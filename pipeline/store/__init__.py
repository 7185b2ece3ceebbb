"""Bundle stores: immutable, content-addressed, verified on the way down.

store = open_store("s3://trtbuild-bundles")   # or file:///dir, file://relative
stored = store.put(bundle_dir)                         # -> StoredBundle
store.get(stored.bundle_id, dest_dir)                  # every file's sha256 checked
"""

from pipeline.store.base import (
    BundleStore,
    ByteCounter,
    FileEntry,
    Manifest,
    RichTransferProgress,
    StoredBundle,
    TransferProgress,
    known_schemes,
    open_store,
    parse_manifest,
    read_local_manifest,
    register_scheme,
)

__all__ = [
    "BundleStore",
    "ByteCounter",
    "FileEntry",
    "Manifest",
    "RichTransferProgress",
    "StoredBundle",
    "TransferProgress",
    "known_schemes",
    "open_store",
    "parse_manifest",
    "read_local_manifest",
    "register_scheme",
]
