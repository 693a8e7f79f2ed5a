"""xunfang."""
