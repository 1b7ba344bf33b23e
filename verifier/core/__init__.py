"""The runtime every part shares: images, profiles, faces, bundles, embedders, distances, decisions. No web, no store."""
