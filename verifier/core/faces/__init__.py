"""Face acquisition for the face profile: detect a face, find its five landmarks, align it.

Runs without TensorFlow (the detector is a TFLite export run by LiteRT), so training,
calibration, serving and enrollment all acquire faces with this same code.
"""
