"""Live collections: stored documents, segments, commits, filters (see docs/collections.md)."""
