"""CountWorld: the synthetic counting world (scenes, files on disk, training and zero-shot sets, its detector)."""
