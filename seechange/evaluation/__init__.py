"""Quality evaluations of the pipeline on real and simulated data."""
