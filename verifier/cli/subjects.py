"""Enrollment commands of `python -m verifier`: the HTTP enrollment API from the terminal.

    python -m verifier enroll SUBJECT IMAGE... [--metadata JSON] [--no-create]
    python -m verifier verify-subject SUBJECT IMAGE [--threshold T | --target-fmr F] [--json]
    python -m verifier identify IMAGE [--top-k K] [--threshold T | --target-fmr F] [--json]
    python -m verifier subjects [list [--limit N] [--after ID] | show ID | create ID | delete ID]
    python -m verifier reembed [--dry-run]
    python -m verifier keys create [--name] NAME [--scope read|write] | keys list | keys revoke ID

Every command takes --database (default $DATABASE_URL, then sqlite:///verifier.db); those
that embed take --bundle [NAME=]DIR (default: the first bundle of $VERIFIER_BUNDLE, then
bundles/face), one modality of the service: a bare DIR is named from its bundle's profile
(face, signature, ...). They act as the service's routes do with that modality: `enroll`
creates subjects of it, a subject of another modality is refused (409 modality_mismatch),
identify and reembed see only its subjects. Subjects stored without a modality belong to
the default one (the first of $VERIFIER_BUNDLE). `subjects create` takes --modality.
Answers are the API's JSON; verify-subject and identify print one readable line unless --json.
"""

import argparse
import json
import sys
from pathlib import Path

from verifier import settings
from verifier.core.errors import VerifierError
from verifier.core.images import MAX_BYTES, decode_image
from verifier.enrollment.service import TOP_K
from verifier.enrollment.store import DEFAULT_URL, MAX_PAGE, PAGE_SIZE, mask_url, open_store
from verifier.enrollment.store.base import KEY_SCOPES


def _database(args):
    return open_store(args.database, keep_images=args.keep_images or settings.get("KEEP_IMAGES"))


def _default_modality():
    """The modality of subjects stored without one: the service's default (VERIFIER_BUNDLE's first)."""
    try:
        return next(iter(settings.bundles()))
    except ValueError as exc:
        raise VerifierError(str(exc), code="bad_bundle") from None


def _bundle(text):
    """--bundle [NAME=]DIR -> (modality, DIR)."""
    from verifier.core.modalities import parse_bundles

    try:
        bundles = parse_bundles(text)
    except ValueError as exc:
        raise VerifierError(f"--bundle: {exc}", code="bad_bundle") from None
    if len(bundles) != 1:
        raise VerifierError(f"--bundle: give one bundle ([NAME=]DIR), not {len(bundles)}", code="bad_bundle")
    return next(iter(bundles.items()))


def _service(args):
    from verifier.core.scorer import Scorer
    from verifier.enrollment.service import EnrollmentService

    modality, path = _bundle(args.bundle)
    return EnrollmentService(_database(args), Scorer.from_bundle(path), modality=modality,
                             default_modality=_default_modality())


def _read(path):
    """(encoded bytes, decoded image) of an image file, or a VerifierError naming it."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_BYTES:
            raise VerifierError(f"{path}: larger than {MAX_BYTES} bytes", code="image_too_large", status=413)
        data = path.read_bytes()
    except OSError as exc:
        raise VerifierError(f"cannot read {path}: {exc.strerror}", code="unreadable_file") from None
    try:
        return data, decode_image(data)
    except VerifierError as exc:
        raise VerifierError(f"{path}: {exc.message}", code=exc.code, status=exc.status) from None


def _metadata(text):
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _modality(text):
    from verifier.core.modalities import check_name

    try:
        return check_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _print(data):
    print(json.dumps(data, indent=2))


def cmd_enroll(args):
    raw, images = zip(*(_read(path) for path in args.images))
    result = _service(args).enroll(args.subject, list(images), raw=list(raw), create=not args.no_create,
                                   metadata=args.metadata)
    for failure in result["failures"]:
        print(f"failure to enrol: {args.images[failure['index']]}: {failure['reason']}", file=sys.stderr)
    _print(result)
    return 0


def cmd_verify_subject(args):
    service = _service(args)
    _, probe = _read(args.image)
    result = service.verify(args.subject, probe, threshold=args.threshold, target_fmr=args.target_fmr)
    if args.json:
        _print({**result, "modality": service.modality, **service.scorer.describe()})
    else:
        relation = "<=" if result["decision"] == "same" else ">"
        print(f"{result['decision']}: {args.subject}: fused distance ({result['fusion']['rule']} over "
              f"{result['fusion']['templates']} templates) {result['distance']:.4f} {relation} threshold "
              f"{result['threshold']:.4f} (policy {result['policy']}), confidence {result['confidence']:.3f}")
    return 0


def cmd_identify(args):
    service = _service(args)
    _, probe = _read(args.image)
    result = service.identify(probe, top_k=args.top_k, threshold=args.threshold, target_fmr=args.target_fmr)
    if args.json:
        _print({**result, "modality": service.modality, **service.scorer.describe()})
        return 0
    print(f"match: {result['match']}" if result["match"] else
          f"no match (nothing within threshold {result['threshold']:.4f}, policy {result['policy']})")
    for rank, candidate in enumerate(result["candidates"], 1):
        print(f"{rank:3d}. {candidate['subject_id']}  distance {candidate['distance']:.4f}  "
              f"confidence {candidate['confidence']:.3f}  {candidate['decision']}")
    return 0


def cmd_subjects(args):
    store = _database(args)
    action = args.action or "list"
    default = _default_modality()

    def shown(subject):
        return {**subject, "modality": subject["modality"] or default}

    if action == "list":
        subjects, next_after, total = store.list_subjects(args.limit, args.after, modality=args.modality,
                                                          default_modality=default)
        _print({"subjects": [shown(s) for s in subjects], "next_after": next_after, "total": total})
        return 0
    if not args.id:
        raise VerifierError(f"subjects {action} needs a subject id", code="missing_argument")
    if action == "show":
        _print(shown(store.get_subject(args.id)))
    elif action == "create":
        _print(shown(store.create_subject(args.id, args.metadata, modality=args.modality or default)))
    else:
        store.delete_subject(args.id)
        _print({"id": args.id, "deleted": True})
    return 0


def cmd_reembed(args):
    result = _service(args).reembed(dry_run=args.dry_run)
    if result["must_reenroll"]:  # of this modality only: another's templates are not stale
        print(f"{len(result['must_reenroll'])} subject(s) have templates without a kept image and must be "
              f"re-enrolled: {', '.join(result['must_reenroll'])}", file=sys.stderr)
    _print(result)
    return 0


def cmd_keys(args):
    from verifier.enrollment.keys import create_key

    if args.action == "create" and bool(args.name) == bool(args.name_option):
        raise VerifierError("keys create needs one name: `keys create NAME` or `keys create --name NAME`",
                            code="missing_argument")
    store = _database(args)
    if args.action == "create":
        key, record = create_key(store, args.name or args.name_option, args.scope)
        print(key)
        print(f"API key {record['id']} ({record['name']}, scope {record['scope']}) created; it is shown only now "
              "and stored only as a hash. Protected routes now require X-API-Key, and stay closed without an "
              "active key even if every key is revoked.", file=sys.stderr)
    elif args.action == "list":
        _print({"keys": store.list_keys()})
    else:
        store.revoke_key(args.id)
        _print({"id": args.id, "revoked": True})
    return 0


def _common(parser, *, bundle):
    database = settings.get("DATABASE_URL") or DEFAULT_URL
    shown = mask_url(database).replace("%", "%%")  # the password never reaches --help
    parser.add_argument("--database", default=database,
                        help=f"store URL: sqlite:///PATH or postgresql://... (default: $DATABASE_URL or {DEFAULT_URL}; "
                             f"now {shown})")
    parser.add_argument("--keep-images", action="store_true",
                        help="keep enrolled images so a new bundle can re-embed them (or $VERIFIER_KEEP_IMAGES=1)")
    if bundle:
        parser.add_argument("--bundle", default=settings.default_bundle_spec(), metavar="[NAME=]DIR",
                            help="bundle directory, optionally named as modality NAME (default: the first of "
                                 "$VERIFIER_BUNDLE, %(default)s)")


def _overrides(parser):
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--threshold", type=float, help="decide at this fused distance threshold")
    group.add_argument("--target-fmr", type=float, help="decide at the fusion calibration's threshold for this FMR")
    parser.add_argument("--json", action="store_true", help="print the API's JSON answer")


def add_commands(subparsers):
    """Add enroll, verify-subject, identify, subjects, reembed and keys to the CLI."""
    enroll = subparsers.add_parser("enroll", help="enroll image files as templates of a subject")
    enroll.add_argument("subject")
    enroll.add_argument("images", nargs="+", metavar="IMAGE")
    enroll.add_argument("--metadata", type=_metadata, help="JSON object stored with a new subject")
    enroll.add_argument("--no-create", action="store_true", help="fail if the subject does not exist yet")
    _common(enroll, bundle=True)
    enroll.set_defaults(func=cmd_enroll)

    verify = subparsers.add_parser("verify-subject", help="verify an image against a subject's templates")
    verify.add_argument("subject")
    verify.add_argument("image")
    _overrides(verify)
    _common(verify, bundle=True)
    verify.set_defaults(func=cmd_verify_subject)

    identify = subparsers.add_parser("identify", help="the enrolled subjects nearest to an image (1:N)")
    identify.add_argument("image")
    identify.add_argument("--top-k", type=int, default=TOP_K, help="candidates to list (default: %(default)s)")
    _overrides(identify)
    _common(identify, bundle=True)
    identify.set_defaults(func=cmd_identify)

    subjects = subparsers.add_parser("subjects", help="list, show, create or delete subjects")
    subjects.add_argument("action", nargs="?", choices=("list", "show", "create", "delete"))
    subjects.add_argument("id", nargs="?")
    subjects.add_argument("--limit", type=int, default=PAGE_SIZE,
                          help=f"subjects per page, 1-{MAX_PAGE} (default: %(default)s)")
    subjects.add_argument("--after", help="list subjects after this id (paging)")
    subjects.add_argument("--metadata", type=_metadata, help="JSON object for `subjects create`")
    subjects.add_argument("--modality", type=_modality,
                          help="`create`: the subject's modality (default: the default one, the first of "
                               "$VERIFIER_BUNDLE); `list`: only its subjects")
    _common(subjects, bundle=False)
    subjects.set_defaults(func=cmd_subjects)

    reembed = subparsers.add_parser("reembed", help="move templates of other bundles to this one where "
                                                    "images were kept; list who must re-enroll")
    reembed.add_argument("--dry-run", action="store_true", help="only report")
    _common(reembed, bundle=True)
    reembed.set_defaults(func=cmd_reembed)

    keys = subparsers.add_parser("keys", help="API keys for the protected routes")
    key_actions = keys.add_subparsers(dest="action", required=True)
    create = key_actions.add_parser("create", help="create a key and print it once")
    create.add_argument("name", nargs="?", help="who or what the key is for")
    create.add_argument("--name", dest="name_option", metavar="NAME", help="the same, as an option")
    create.add_argument("--scope", choices=KEY_SCOPES, default="write",
                        help="read: verify, identify, list; write: also create, enroll, delete (default: %(default)s)")
    key_actions.add_parser("list", help="list keys (ids, names, dates; never the keys)")
    revoke = key_actions.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("id")
    for parser in (create, key_actions.choices["list"], revoke):
        _common(parser, bundle=False)
    keys.set_defaults(func=cmd_keys)
