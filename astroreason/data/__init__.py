"""Galaxy10 data: the reader, the GalSim surrogate, seeded stratified deduplicated splits, HF datasets views."""
