"""The baseline: a bare aiohttp handler that parses the same JSON and answers 202.

Run by bench/ingest.py as ``python bench/bare.py PORT``; nothing durable, no validation.
"""

from __future__ import annotations

import sys
import uuid

from aiohttp import web


async def accept(request: web.Request) -> web.Response:
    """Parse the JSON body and answer 202 with an id, as the daemon's answer looks."""
    body = await request.json()
    if "from" not in body:
        return web.json_response({"error": "missing", "field": "from"}, status=400)
    return web.json_response({"id": uuid.uuid4().hex}, status=202)


def main() -> None:
    """Serve on 127.0.0.1:PORT until killed."""
    app = web.Application()
    app.router.add_post("/v1/messages", accept)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
