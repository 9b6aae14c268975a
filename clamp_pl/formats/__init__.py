"""Label and result files in and out (no torch): COCO keypoints, DeepLabCut / lightning-pose tables, SLEAP,
the Animal-Pose release. Each format is owned by one module."""
