"""`python -m verifier`: verify two images, serve the API with gunicorn, export the fast path.

    python -m verifier verify A B --bundle DIR [--threshold T | --target-fmr F] [--json]
    python -m verifier serve --bundle DIR --port N [--host H] [--workers W] [--threads T]
    python -m verifier export --bundle DIR

The bundle defaults to $VERIFIER_BUNDLE, then bundles/default. Bad input (a missing file,
not an image, an uncalibrated bundle, an unsupported target FMR) prints one clear line
and exits 2.
"""

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from verifier import settings
from verifier.cli import subjects as cli_subjects
from verifier.core.errors import VerifierError

EXIT_BAD_INPUT = 2


def default_bundle():
    return settings.get("VERIFIER_BUNDLE")


def _quiet_tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def cmd_verify(args):
    """Print the same answer as POST /v1/verify for two image files."""
    from verifier.core.images import read_image
    from verifier.core.scorer import Scorer

    options = {"threshold": args.threshold, "target_fmr": args.target_fmr}
    scorer = Scorer.from_bundle(args.bundle)
    scorer.rule(**options)  # a bad option fails before the images are read
    images = [read_image(path) for path in (args.image_a, args.image_b)]
    (decision,), timings = scorer.verify([images[0]], [images[1]], **options)
    answer = {**decision, **scorer.describe(), "timings_ms": timings}
    if args.json:
        print(json.dumps(answer))
    else:
        relation = "<=" if decision["decision"] == "same" else ">"
        print(f"{decision['decision']}: distance {decision['distance']:.4f} {relation} threshold "
              f"{decision['threshold']:.4f} (policy {decision['policy']}), "
              f"confidence {decision['confidence']:.3f}\n"
              f"model {answer['model']}, calibration {answer['calibration_id']}, "
              f"profile {answer['profile']}, {answer['backend']}")
    return 0


def cmd_export(args):
    """Write model.tflite (+ record) into the bundle after checking it agrees with model.keras."""
    from verifier.core import fastpath
    from verifier.core.bundle import load_bundle

    bundle = load_bundle(args.bundle)
    data, record = fastpath.build_export(bundle)
    if not record["max_abs_diff"] <= fastpath.TOLERANCE:
        raise VerifierError(f"the TFLite export disagrees with model.keras (max abs embedding difference "
                            f"{record['max_abs_diff']:.3g} > {fastpath.TOLERANCE:g}); not written",
                            code="export_mismatch")
    try:
        fastpath.write_export(bundle.path, data, record)
    except OSError as exc:
        raise VerifierError(f"cannot write into {bundle.path}: {exc.strerror}", code="bundle_read_only") from None
    print(f"wrote {Path(bundle.path) / fastpath.TFLITE_FILE} ({len(data)} bytes); max abs embedding "
          f"difference vs model.keras {record['max_abs_diff']:.3g} on {record['probe_count']} inputs")
    return 0


def _ensure_export(bundle_dir):
    """Export the fast path in a child process if the bundle lacks a current one.

    Workers can then serve with LiteRT alone; doing it here, in a separate process, keeps
    TensorFlow out of the gunicorn master. A read-only bundle is fine: workers convert in memory.
    """
    from verifier.core import fastpath
    from verifier.core.bundle import load_bundle

    if fastpath.read_export(load_bundle(bundle_dir, with_model=False)) is not None:
        return
    print(f"exporting the TFLite fast path of {bundle_dir} (first start)...", file=sys.stderr, flush=True)
    done = subprocess.run([sys.executable, "-m", "verifier", "export", "--bundle", str(bundle_dir)])
    if done.returncode != 0:
        print("export failed; workers will convert in memory or use tf.function", file=sys.stderr, flush=True)


def cmd_serve(args):
    """Check the bundle, make sure its fast path is exported, then exec gunicorn with the repo's config."""
    from verifier.core.bundle import read_meta

    bundle = Path(args.bundle).resolve()
    read_meta(bundle)  # fail now, with a clear message, not in every worker
    _ensure_export(bundle)
    env = dict(os.environ, VERIFIER_BUNDLE=str(bundle))
    config = Path(__file__).parent.parent / "web" / "gunicorn_conf.py"
    argv = [sys.executable, "-m", "gunicorn", "--config", str(config), "--bind", f"{args.host}:{args.port}"]
    if args.workers:
        argv += ["--workers", str(args.workers)]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    argv.append("verifier.web.app:create_app()")
    sys.stdout.flush()
    os.execve(sys.executable, argv, env)


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _port(text):
    value = int(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"not a TCP port: {value}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m verifier", description="Identity verification service.")
    subparsers = parser.add_subparsers(dest="command", required=True)

    verify = subparsers.add_parser("verify", help="verify that two image files show the same identity")
    verify.add_argument("image_a")
    verify.add_argument("image_b")
    verify.add_argument("--bundle", default=default_bundle(), help="bundle directory (default: %(default)s)")
    override = verify.add_mutually_exclusive_group()
    override.add_argument("--threshold", type=float, help="decide at this distance threshold")
    override.add_argument("--target-fmr", type=float, help="decide at the calibrated threshold for this FMR")
    verify.add_argument("--json", action="store_true", help="print the API's JSON answer")
    verify.set_defaults(func=cmd_verify)

    serve = subparsers.add_parser("serve", help="run the HTTP API with gunicorn")
    serve.add_argument("--bundle", default=default_bundle(), help="bundle directory (default: %(default)s)")
    serve.add_argument("--port", type=_port, default=int(os.environ.get("PORT", 8000)))
    serve.add_argument("--host", default=os.environ.get("VERIFIER_HOST", "127.0.0.1"))
    serve.add_argument("--workers", type=_positive_int, help="gunicorn workers (default: $VERIFIER_WORKERS or CPUs)")
    serve.add_argument("--threads", type=_positive_int, help="threads per worker (default: $VERIFIER_THREADS or 2)")
    serve.set_defaults(func=cmd_serve)

    export = subparsers.add_parser("export", help="write the TFLite fast path into a bundle")
    export.add_argument("--bundle", default=default_bundle(), help="bundle directory (default: %(default)s)")
    export.set_defaults(func=cmd_export)

    cli_subjects.add_commands(subparsers)
    return parser


def main(argv=None):
    _quiet_tensorflow()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("verifier.core.scorer").setLevel(logging.INFO)  # the fast path's agreement line
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except VerifierError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_BAD_INPUT
