"""The runtime shared by training and calibration: images, profiles, bundles, embedding, serving."""
