"""Geometry, preprocessing and drawing shared by every layer (numpy and cv2 only)."""
