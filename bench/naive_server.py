"""The naive baseline for bench/serve.py: Flask's own server, `model.predict` on every request.

The same bundle, decoding and preprocessing as the real service; only the model call
differs (Keras `predict` rebuilds its machinery per call). Not for production use.

    python bench/naive_server.py --bundle DIR --port N
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from flask import Flask, jsonify, request

from verifier.core.acquisition import acquire_all
from verifier.core.bundle import load_bundle
from verifier.core.decisions import probability_same
from verifier.core.distances import pair_distances
from verifier.core.images import decode_image


def create_naive_app(bundle_dir):
    bundle = load_bundle(bundle_dir)
    app = Flask(__name__)

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok"})

    @app.post("/v1/verify")
    def verify():
        images = [decode_image(request.files[name].read()) for name in ("image_a", "image_b")]
        embeddings = bundle.model.predict(acquire_all(images, bundle.profile).inputs, verbose=0)
        distance = float(pair_distances(embeddings[:1], embeddings[1:], bundle.metric)[0])
        calibration = bundle.calibration
        return jsonify({"distance": distance,
                        "decision": "same" if distance <= calibration["threshold"] else "different",
                        "confidence": float(probability_same([distance], calibration["confidence"])[0])})

    return app


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    create_naive_app(args.bundle).run(host="127.0.0.1", port=args.port, threaded=True)


if __name__ == "__main__":
    main()
