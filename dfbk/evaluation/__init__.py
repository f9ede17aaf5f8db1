"""evaluate stage: image-similarity metrics (`metrics`) and per-run scoring (`evaluate`)."""
