"""EdgeFill operator: reconciles EdgeSite and ContentSet objects with kopf.

``operator/`` is a plain folder, never a package: ``operator`` is the name of
a standard library module that asyncio, aiohttp and kopf import, and an
``operator/__init__.py`` on ``sys.path`` would shadow it. The importable
package is ``edgefill_operator``; run it as ``kopf run -m edgefill_operator.main``.
"""
