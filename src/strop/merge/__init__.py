"""Model merging: `strop merge CONFIG.yaml` (docs/merge.md)."""
