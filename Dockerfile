# The verification service: gunicorn serving `python -m verifier serve` on port 8000.
#   docker build -t verifier .
#   docker run --rm -v verifier-data:/data verifier python -m verifier keys create --name ops   # prints the key once
#   docker run -p 8000:8000 -v verifier-data:/data verifier
# It binds 0.0.0.0, so `serve` refuses to start until the store on /data holds an API key
# (and refuses a missing store: a volume not mounted). The image serves bundles/face as the
# default modality `face`, plus bundles/signature as `signature` where the build context holds it
# (serve's default; set VERIFIER_BUNDLE=NAME=DIR,NAME=DIR for others).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin verifier \
    && mkdir /data && chown verifier:verifier /data
# The enrollment store: SQLite on a volume by default; set DATABASE_URL=postgresql://... to share one.
ENV DATABASE_URL=sqlite:////data/verifier.db
VOLUME /data
COPY --chown=verifier:verifier . .
RUN pip install --no-deps .
USER verifier

# Export the TFLite fast path now (checked against model.keras) into the export cache
# (~verifier/.cache/verifier/exports/<bundle id>, not the bundle), so workers never convert at start.
RUN for meta in bundles/face/bundle.json bundles/signature/bundle.json; do \
        if [ -f "$meta" ]; then python -m verifier export --bundle "$(dirname "$meta")" || exit 1; fi; \
    done

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)" || exit 1

CMD ["python", "-m", "verifier", "serve", "--port", "8000", "--host", "0.0.0.0"]
