"""Explanation: lesion boxes, Grad-CAM, occlusion and their controls."""
