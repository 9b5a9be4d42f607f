"""ACD: skill-based routing core (pure), its simulation and benchmark."""
