"""GET /: the web page for people, over the same API (plain HTML, CSS and JavaScript in static/)."""

from flask import Blueprint, render_template

from verifier.enrollment.keys import HEADER
from verifier.web.openapi import operation

bp = Blueprint("page", __name__)


@bp.get("/")
@operation({"summary": "The web page for people: verify, subjects, identify, calibration", "operationId": "page",
            "tags": ["page"],
            "responses": {"200": {"description": "The page (HTML; its scripts and styles are under /static/).",
                                  "content": {"text/html": {"schema": {"type": "string"}}}}}})
def index():
    """The page: verify, subjects, identify and calibration views."""
    return render_template("index.html", key_header=HEADER)
