"""rlfleet operator: reconciles InferencePool resources (importable name differs from the folder so stdlib `operator` is not shadowed)."""
