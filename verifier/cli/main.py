"""`python -m verifier`: verify two images, serve the API with gunicorn, export the fast path.

    python -m verifier verify A B --bundle DIR [--threshold T | --target-fmr F] [--json]
    python -m verifier serve [--bundle [NAME=]DIR]... --port N [--host H] [--workers W] [--threads T]
                             [--allow-anonymous] [--create-store]
    python -m verifier export --bundle DIR
    python -m verifier catalogue add FOLDER | search IMAGE [-k K]   (verifier.cli.catalogue)

`serve` serves one bundle per modality: `--bundle face=bundles/face --bundle
signature=bundles/signature` (repeatable; a bare DIR is named from its bundle's profile; the
first is the default modality). Its default is $VERIFIER_BUNDLE (DIR or NAME=DIR,NAME=DIR),
then face=bundles/face plus signature=bundles/signature when that bundle exists. The
one-bundle commands default to the first of those. Bad input (a missing file,
not an image, an uncalibrated bundle, an unsupported target FMR) prints one clear line
and exits 2.
"""

import argparse
import ipaddress
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from verifier import settings
from verifier.cli import catalogue as cli_catalogue, subjects as cli_subjects
from verifier.core.errors import VerifierError

EXIT_BAD_INPUT = 2


def default_bundle():
    """The one-bundle commands' default: the first (default modality's) bundle of VERIFIER_BUNDLE."""
    return settings.default_bundle_path()


def serve_bundles(items):
    """`serve`'s --bundle values (None: VERIFIER_BUNDLE or its default) -> {modality: absolute path}.

    Every bundle.json is read here (a clear error now, not in every worker); a duplicate or
    badly named modality is a VerifierError (exit 2).
    """
    from verifier.core.bundle import read_meta
    from verifier.core.modalities import parse_bundles

    try:
        bundles = parse_bundles(items) if items else settings.bundles()
    except ValueError as exc:
        raise VerifierError(f"--bundle: {exc}" if items else str(exc), code="bad_bundle") from None
    resolved = {}
    for name, path in bundles.items():
        path = Path(path).resolve()
        try:
            read_meta(path)
        except VerifierError as exc:
            raise VerifierError(f"modality {name}: {exc.message}", code=exc.code, status=exc.status) from None
        resolved[name] = path
    return resolved


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
    """Upgrade a format-1 bundle in place, then cache model.tflite (+ record) once it agrees with model.keras."""
    from verifier.core import fastpath
    from verifier.core.bundle import FORMAT_VERSION, load_bundle, upgrade_bundle

    try:
        upgraded = upgrade_bundle(args.bundle)
    except OSError as exc:
        raise VerifierError(f"cannot upgrade {args.bundle} in place: {exc.strerror}", code="bundle_read_only") from None
    if upgraded:
        print(f"upgraded {args.bundle} to bundle format {FORMAT_VERSION}: bundle id {upgraded[0]} -> {upgraded[1]} "
              f"(templates enrolled under {upgraded[0]} need `python -m verifier reembed`)", file=sys.stderr)
    bundle = load_bundle(args.bundle)
    if fastpath.shipped_export(bundle) is not None:
        print(f"{args.bundle} ships its own serving model ({bundle.meta['serving']['file']}): nothing to export")
        return 0
    data, record = fastpath.build_export(bundle)
    if not record["max_abs_diff"] <= fastpath.TOLERANCE:
        raise VerifierError(f"the TFLite export disagrees with model.keras (max abs embedding difference "
                            f"{record['max_abs_diff']:.3g} > {fastpath.TOLERANCE:g}); not written",
                            code="export_mismatch")
    out = fastpath.export_dir(bundle)
    try:
        path = fastpath.write_export(out, data, record)
    except OSError as exc:
        raise VerifierError(f"cannot write the export into {out}: {exc.strerror} (point {fastpath.CACHE_ENV} "
                            "at a writable directory)", code="cache_read_only") from None
    print(f"wrote {path} ({len(data)} bytes); max abs embedding "
          f"difference vs model.keras {record['max_abs_diff']:.3g} on {record['probe_count']} random inputs and a blank one")
    return 0


def _ensure_export(bundle_dir):
    """Export the fast path into the cache in a child process if it lacks a current one for the bundle.

    A bundle that ships its serving model needs none. Workers can then serve with LiteRT alone;
    doing it here, in a separate process, keeps TensorFlow out of the gunicorn master. A
    read-only cache is fine: workers convert in memory.
    """
    from verifier.core import fastpath
    from verifier.core.bundle import load_bundle

    bundle = load_bundle(bundle_dir, with_model=False)
    if "serving" in bundle.meta or fastpath.read_export(bundle) is not None:
        return
    print(f"exporting the TFLite fast path of {bundle_dir} (first start)...", file=sys.stderr, flush=True)
    done = subprocess.run([sys.executable, "-m", "verifier", "export", "--bundle", str(bundle_dir)])
    if done.returncode != 0:
        print("export failed; workers will convert in memory or use tf.function", file=sys.stderr, flush=True)


def is_loopback(host):
    """Whether `host` (a name or an address, IPv6 maybe in brackets) reaches only this machine."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_store(args):
    """Open the store `serve` will use, refusing what would quietly serve an empty or anonymous one.

    A missing SQLite file is an error (a mistyped DATABASE_URL would start empty, with no keys)
    unless --create-store, or DATABASE_URL is unset: the quick start's default file is then made
    on first start, and said so. Beyond loopback, a store where no API key was ever created is
    refused unless --allow-anonymous.
    """
    from verifier.enrollment.keys import CREATE_HINT, key_state
    from verifier.enrollment.store import DEFAULT_URL, open_store
    from verifier.enrollment.store.sqlite import path_from_url

    url = settings.get("DATABASE_URL")
    create = args.create_store or url is None
    url = url or DEFAULT_URL
    if url.startswith("sqlite:") and not path_from_url(url).exists():
        path = path_from_url(url)
        if not create:
            raise VerifierError(f"the SQLite store {path} does not exist: serving it would start an empty store "
                                "with no API keys. Check DATABASE_URL, or pass --create-store to create it",
                                code="store_missing")
        print(f"creating the enrollment store {path} (first start)", file=sys.stderr, flush=True)
    store = open_store(url)
    try:
        enabled, active = key_state(store)
    finally:
        store.close()
    if enabled and not active:
        print(f"warning: no API key is active, so every protected route answers 401: {CREATE_HINT}",
              file=sys.stderr, flush=True)
    if enabled or is_loopback(args.host):
        return
    if not args.allow_anonymous:
        raise VerifierError(f"refusing to serve on {args.host} with no API key: anyone who can reach it could "
                            f"enroll, delete, identify and verify. Create a key first ({CREATE_HINT}, with the same "
                            "DATABASE_URL), or pass --allow-anonymous (VERIFIER_ALLOW_ANONYMOUS=1) to serve "
                            "without keys on purpose", code="no_api_key")
    print(f"warning: serving on {args.host} with no API key (--allow-anonymous): every route is open to anyone "
          "who can reach it", file=sys.stderr, flush=True)


def cmd_serve(args):
    """Check the bundles and the store, make sure each fast path is exported, then exec gunicorn."""
    from verifier.core.modalities import format_bundles

    bundles = serve_bundles(args.bundle)  # fail now, with a clear message, not in every worker
    check_store(args)
    for bundle in bundles.values():
        _ensure_export(bundle)
    env = dict(os.environ, VERIFIER_BUNDLE=format_bundles(bundles),
               VERIFIER_CREATE_STORE="0")  # the workers never make a store
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
    serve.add_argument("--bundle", action="append", metavar="[NAME=]DIR",
                       help="a bundle to serve as modality NAME (repeat for several; the first is the default; a "
                            "bare DIR is named from its profile) (default: $VERIFIER_BUNDLE or "
                            f"{settings.default_bundles().replace('%', '%%')})")
    serve.add_argument("--port", type=_port, default=int(os.environ.get("PORT", 8000)))
    serve.add_argument("--host", default=os.environ.get("VERIFIER_HOST", "127.0.0.1"))
    serve.add_argument("--workers", type=_positive_int, help="gunicorn workers (default: $VERIFIER_WORKERS or CPUs)")
    serve.add_argument("--threads", type=_positive_int, help="threads per worker (default: $VERIFIER_THREADS or 2)")
    serve.add_argument("--allow-anonymous", action="store_true", default=settings.get("ALLOW_ANONYMOUS"),
                       help="serve beyond loopback although no API key exists (or $VERIFIER_ALLOW_ANONYMOUS=1)")
    serve.add_argument("--create-store", action="store_true",
                       help="create the SQLite file of DATABASE_URL if it is missing (first start)")
    serve.set_defaults(func=cmd_serve)

    export = subparsers.add_parser("export", help="cache the bundle's TFLite fast path (in $VERIFIER_CACHE_DIR "
                                          "or ~/.cache/verifier; upgrades a format-1 bundle first)")
    export.add_argument("--bundle", default=default_bundle(), help="bundle directory (default: %(default)s)")
    export.set_defaults(func=cmd_export)

    cli_subjects.add_commands(subparsers)
    cli_catalogue.add_commands(subparsers)
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
