"""`serve --docs`: Swagger UI served from the packaged `swagger-ui-bundle`, never from a CDN.

Why: FastAPI's default `/docs` page pulls its JavaScript and CSS from jsdelivr. Offline (our
users' plants and hospitals) the page is blank, and online it runs a third party's script on
the service's own origin, next to the API keys typed into it. The service therefore has no
`/docs` by default; with `--docs` the same Swagger UI is served from the files inside the
`swagger_ui_bundle` package (pinned in requirements.lock). `/openapi.json` is always there.
"""

from __future__ import annotations


def mount_docs(app) -> None:
    """Add `/docs` (HTML) and `/docs/static/*` (Swagger UI's files from the installed package) to `app`."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs/static", StaticFiles(directory=str(swagger_ui_path)), name="docs_static")

    @app.get("/docs", name="docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - API",
                                   swagger_js_url="/docs/static/swagger-ui-bundle.js",
                                   swagger_css_url="/docs/static/swagger-ui.css",
                                   swagger_favicon_url="/docs/static/favicon-32x32.png")
