"""What every mode shares at run time: mesh, train state, train step, checkpoints, logs."""
