"""The benchmark harness: cost, fidelity, accuracy and their reports (`potwatch bench`, `potwatch make-qa`)."""
