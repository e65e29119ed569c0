"""Alert delivery to a Slack-compatible incoming webhook, with retries on 429, 5xx and
connection errors. A webhook that stays down loses nothing: every alert is also on the
alerts topic and in the alerts table."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from schemas.alerts import Alert, AlertResolved

log = logging.getLogger(__name__)


class WebhookSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    url: SecretStr | None = Field(default=None, description="Slack-compatible incoming webhook; unset: none.")
    timeout_s: float = Field(default=10.0, gt=0)
    attempts: int = Field(default=4, ge=1)
    backoff_s: float = Field(default=0.5, ge=0)


async def post(settings: WebhookSettings, payload: dict[str, Any]) -> bool:
    """True when the webhook took it; False after the last attempt failed (logged)."""
    if settings.url is None:
        return False
    timeout = aiohttp.ClientTimeout(total=settings.timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for attempt in range(1, settings.attempts + 1):
            try:
                async with session.post(settings.url.get_secret_value(), json=payload) as response:
                    if response.status < 300:
                        return True
                    if response.status != 429 and response.status < 500:
                        log.error("alert webhook refused the alert: HTTP %d", response.status)
                        return False
                    problem = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = type(exc).__name__
            if attempt < settings.attempts:
                await asyncio.sleep(settings.backoff_s * 2 ** (attempt - 1))
    log.error("alert webhook failed %d times (last: %s)", settings.attempts, problem)
    return False


def slack_payload(alert: Alert) -> dict[str, Any]:
    """Slack-compatible incoming-webhook JSON (`text`, plus blocks for richer clients)."""
    icon = ":white_check_mark:" if isinstance(alert, AlertResolved) else ":rotating_light:"
    title = f"{icon} {type(alert).__name__}: {alert.check} / {alert.subject}"
    return {
        "text": f"{title}\n{alert.message}",
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*{title}*\n{alert.message}"}},
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": json.dumps({"alert_id": alert.alert_id})}],
            },
        ],
    }


async def deliver(settings: WebhookSettings, alert: Alert) -> bool:
    """Post one alert; True when the webhook took it (see `post`)."""
    return await post(settings, slack_payload(alert))
