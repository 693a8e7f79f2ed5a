"""The camera side of a unit: capture, motion, clips, snapshots, tamper, retention."""
