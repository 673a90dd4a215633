"""Click-Pose: ED-Pose detector with pose-error-modeling queries and a click refinement routine."""
