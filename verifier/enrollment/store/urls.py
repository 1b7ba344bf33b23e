"""Store URLs made safe to print: the password replaced by ***, wherever a URL is shown."""

from urllib.parse import urlsplit

MASK = "***"


def _mask_pair(pair):
    key = pair.split("=", 1)[0]
    return f"{key}={MASK}" if key.lower() == "password" else pair


def mask_url(url):
    """`url` with any password (user:PASS@host, or password=... in the query) replaced by ***."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:  # unparsable: show only the scheme
        return url.split(":", 1)[0] + ":" + MASK
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            netloc = f"{userinfo.split(':', 1)[0]}:{MASK}@{host}"
    query = "&".join(_mask_pair(pair) for pair in parts.query.split("&")) if parts.query else ""
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    return (f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")
            + (f"#{parts.fragment}" if parts.fragment else ""))
