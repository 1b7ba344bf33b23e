"""Catalogue commands of `python -m verifier`: fill the store from a folder, search it by image.

    python -m verifier catalogue add FOLDER [--bundle [NAME=]DIR] [--modality NAME] [--database URL] [--json]
    python -m verifier search IMAGE [-k K] [--threshold T | --target-fmr F] [--modality NAME] [--json]

The catalogue is the enrollment store: FOLDER/<item>/<images> makes each item folder a
subject (created if absent, of the bundle's modality) and enrolls its images as templates,
one `EnrollmentService.enroll` per item. Files that do not decode, images failing the quality
check and (face bundles) images without a face are skipped and listed with their reason; images
the item already holds (a folder added again) are counted as already in the catalogue; an
item folder whose name is not a valid subject id, or a subject of another modality, is skipped
whole. A missing or empty FOLDER, or one without item folders or images, is one error line (exit
2), as is a run that enrolled nothing. `search` prints POST /v1/search's answer: the k nearest
stored images with their item, template id, distance and calibrated confidence.
"""

import sys
from pathlib import Path

from verifier.cli.subjects import _bundle, _common, _modality, _overrides, _print, _read, _service
from verifier.core.errors import VerifierError
from verifier.enrollment.service import SEARCH_K
from verifier.enrollment.store import Conflict, check_subject_id


def _with_modality(args):
    """The service for --bundle, served as modality --modality when given (it overrides a NAME= in --bundle)."""
    if args.modality:
        args.bundle = f"{args.modality}={_bundle(args.bundle)[1]}"
    return _service(args)


def _items(folder):
    """[(item name, [image paths])] of FOLDER/<item>/<files>, or a VerifierError saying what is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise VerifierError(f"catalogue folder not found: {folder}" if not folder.exists() else
                            f"not a folder: {folder} (expected FOLDER/<item>/<images>)", code="bad_folder")
    items = [(p.name, sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")))
             for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    if not items:
        raise VerifierError(f"{folder} has no item folders: expected FOLDER/<item>/<images>, one folder per item",
                            code="bad_folder")
    if not any(files for _, files in items):
        raise VerifierError(f"{folder} has item folders but no files in them (expected FOLDER/<item>/<images>)",
                            code="bad_folder")
    return items


def _add_item(service, item, files, report):
    """Enroll one item folder's readable images; record what was enrolled and what was skipped, and why."""
    from verifier.enrollment.service import FailureToEnrol

    readable, raw, images = [], [], []
    for path in files:
        try:
            data, image = _read(path)
        except VerifierError as exc:
            report["skipped"].append({"path": str(path), "reason": f"unreadable: {exc.message}"})
            continue
        readable.append(path)
        raw.append(data)
        images.append(image)
    if not images:
        return
    existed = _exists(service.store, item)
    try:
        result = service.enroll(item, images, raw=raw, create=True, skip_known=True)
    except FailureToEnrol as exc:
        report["skipped"] += [{"path": str(readable[f["index"]]), "reason": f["reason"]} for f in exc.failures]
        return
    except Conflict as exc:  # a subject of another modality (409 modality_mismatch)
        report["skipped"] += [{"path": str(path), "reason": exc.message} for path in readable]
        return
    failed = {f["index"]: f["reason"] for f in result["failures"]}
    report["skipped"] += [{"path": str(readable[i]), "reason": reason} for i, reason in failed.items()]
    report["known"] += [str(readable[i]) for i in result["known"]]
    left_out = set(failed) | set(result["known"])
    kept = [path for i, path in enumerate(readable) if i not in left_out]
    report["images"] += [{"path": str(path), "subject_id": item, "template_id": template}
                         for path, template in zip(kept, result["template_ids"])]
    report["items"] += 1
    report["created"] += not existed


def _exists(store, subject_id):
    from verifier.enrollment.store import NotFound

    try:
        store.get_subject(subject_id)
        return True
    except NotFound:
        return False


def cmd_catalogue_add(args):
    items = _items(args.folder)
    service = _with_modality(args)
    report = {"folder": str(args.folder), "modality": service.modality, "model": service.scorer.bundle_id,
              "items": 0, "created": 0, "enrolled": 0, "images": [], "known": [], "skipped": []}
    for item, files in items:
        try:
            check_subject_id(item)
        except VerifierError as exc:
            report["skipped"] += [{"path": str(path), "reason": f"item folder {item!r}: {exc.message}"}
                                  for path in files]
            continue
        _add_item(service, item, files, report)
    report["enrolled"] = len(report["images"])
    for skip in report["skipped"]:
        print(f"skipped {skip['path']}: {skip['reason']}", file=sys.stderr)
    if args.json:
        _print(report)
    else:
        print(f"{report['items']} items ({report['created']} new), {report['enrolled']} images enrolled, "
              f"{len(report['known'])} already in the catalogue, {len(report['skipped'])} skipped; "
              f"modality {service.modality}, model {service.scorer.bundle_id}")
    if not report["enrolled"] and not report["known"]:
        raise VerifierError(f"no image of {args.folder} could be enrolled ({len(report['skipped'])} skipped)",
                            code="nothing_enrolled")
    return 0


def cmd_search(args):
    service = _with_modality(args)
    _, probe = _read(args.image)
    result = service.search(probe, k=args.k, threshold=args.threshold, target_fmr=args.target_fmr)
    if args.json:
        _print({**result, "modality": service.modality, **service.scorer.describe()})
        return 0
    catalogue = result["catalogue"]
    print(f"{len(result['results'])} nearest of {catalogue['images']} images ({catalogue['items']} items); "
          f"threshold {result['threshold']:.4f} (policy {result['policy']})")
    for hit in result["results"]:
        print(f"{hit['rank']:3d}. {hit['subject_id']}  template {hit['template_id']}  distance {hit['distance']:.4f}  "
              f"confidence {hit['confidence']:.3f}  {hit['decision']}")
    return 0


def add_commands(subparsers):
    """Add `catalogue add` and `search` to the CLI."""
    catalogue = subparsers.add_parser("catalogue", help="fill the catalogue (the enrollment store) from a folder")
    actions = catalogue.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="FOLDER/<item>/<images>: each item folder becomes a subject, its "
                                         "images its templates")
    add.add_argument("folder", type=Path)
    add.add_argument("--modality", type=_modality, help="the modality the bundle serves as (default: NAME of "
                                                       "--bundle NAME=DIR, else the bundle's profile)")
    add.add_argument("--json", action="store_true", help="print every enrolled image's template id and every skip")
    _common(add, bundle=True)
    add.set_defaults(func=cmd_catalogue_add)

    search = subparsers.add_parser("search", help="the stored images most similar to an image (catalogue search)")
    search.add_argument("image")
    search.add_argument("-k", type=int, default=SEARCH_K, help="images to list, 1-100 (default: %(default)s)")
    search.add_argument("--modality", type=_modality, help="the modality the bundle serves as")
    _overrides(search)
    _common(search, bundle=True)
    search.set_defaults(func=cmd_search)

