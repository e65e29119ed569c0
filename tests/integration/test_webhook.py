"""Alert delivery against a local HTTP server: retries on 5xx and 429, none on other 4xx."""

from __future__ import annotations

from aiohttp import web

from connectors.webhook import WebhookSettings, post
from topology.stack import free_port


async def serve(statuses: list[int]) -> tuple[web.AppRunner, str, list[dict]]:
    received: list[dict] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(status=statuses[min(len(received), len(statuses)) - 1])

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/hook", received


async def test_the_webhook_is_retried_until_it_takes_the_alert():
    runner, url, received = await serve([500, 429, 200])
    try:
        ok = await post(WebhookSettings(url=url, backoff_s=0.01), {"text": "alert"})
    finally:
        await runner.cleanup()
    assert ok and len(received) == 3 and received[-1] == {"text": "alert"}


async def test_a_refusal_is_not_retried_and_a_dead_webhook_gives_up():
    runner, url, received = await serve([400])
    try:
        assert not await post(WebhookSettings(url=url, backoff_s=0.01), {"text": "x"})
    finally:
        await runner.cleanup()
    assert len(received) == 1
    nobody = f"http://127.0.0.1:{free_port()}/hook"
    assert not await post(WebhookSettings(url=nobody, attempts=2, backoff_s=0.01), {"text": "x"})
    assert not await post(WebhookSettings(), {"text": "no url configured"})
