"""The synthetic world potwatch trains and measures its `tiny` model on: a data generator (scenes,
events, rendered frames, questions with their true answers, per-patch labels), not part of streaming."""
