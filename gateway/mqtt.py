"""Optional MQTT publishing of the gateway's state (aiomqtt), for a home-energy display or a local logger.

Topics under ``[mqtt].topic`` (default ``derlink/gateway/<LFDI>``), retained, QoS 1:

* ``<topic>/online``: ``true`` while connected; the broker publishes ``false`` (last will) if we vanish;
* ``<topic>/state``: JSON — regime, link state, each effective limit with its source, site meter power,
  next scheduled change. Published at once when the decision changes, and every ``interval_s`` with
  fresh measurements.

Publishing never blocks control: a broker that is down is retried with backoff, in its own task.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.ports import RuntimeView

log = logging.getLogger("derlink.gateway.mqtt")


def state_payload(status: dict[str, Any]) -> dict[str, Any]:
    """The compact state published on ``<topic>/state``."""
    limits = {
        name: {"value": item["value"], "source": item["source"]}
        for name, item in status["limits"].items()
        if item is not None and item.get("value") is not None
    }
    site = status.get("site") or {}
    return {
        "lfdi": status["lfdi"],
        "time": status["now"],
        "regime": status["regime"],
        "link_lost": status["link_lost"],
        "limits": limits,
        "next_change": status.get("next_change"),
        "active_controls": status.get("active_controls") or {},
        "meter_w": site.get("meter_w"),
        "export_w": site.get("export_w"),
        "loop_mode": site.get("mode"),
    }


class MqttPublisher:
    def __init__(self, runtime: RuntimeView) -> None:
        self.runtime = runtime
        cfg = runtime.settings.mqtt
        self.cfg = cfg
        self.topic = (cfg.topic or f"derlink/gateway/{runtime.settings.lfdi}").rstrip("/")
        self.published = 0
        self.connected = False

    def _decision_key(self, payload: dict[str, Any]) -> str:
        return json.dumps({k: payload[k] for k in ("regime", "link_lost", "limits", "next_change",
                                                   "active_controls")}, sort_keys=True)  # fmt: skip

    async def run(self) -> None:
        import aiomqtt

        delay = 1.0
        while True:
            will = aiomqtt.Will(f"{self.topic}/online", b"false", qos=1, retain=True)
            try:
                async with aiomqtt.Client(
                    self.cfg.host,
                    self.cfg.port,
                    username=self.cfg.username,
                    password=self.cfg.password,
                    identifier=f"derlink-gw-{self.runtime.settings.lfdi[:16]}",
                    will=will,
                    timeout=10.0,
                ) as client:
                    self.connected = True
                    delay = 1.0
                    await client.publish(f"{self.topic}/online", b"true", qos=1, retain=True)
                    await self._publish_loop(client)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # aiomqtt.MqttError, OSError: broker down or gone
                log.warning(
                    "MQTT broker %s:%d: %s; retrying in %.0f s", self.cfg.host, self.cfg.port, exc, delay
                )
            finally:
                self.connected = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 60.0)

    async def _publish_loop(self, client: Any) -> None:
        last_key = None
        last_at = 0.0
        while True:
            payload = state_payload(await self.runtime.status())
            key = self._decision_key(payload)
            if key != last_key or time.monotonic() - last_at >= self.cfg.interval_s:
                await client.publish(
                    f"{self.topic}/state", json.dumps(payload, sort_keys=True).encode(), qos=1, retain=True
                )
                self.published += 1
                last_key, last_at = key, time.monotonic()
            wait = max(self.cfg.interval_s - (time.monotonic() - last_at), 0.05)
            async with self.runtime.changed:
                with contextlib.suppress(TimeoutError):
                    # asyncio.timeout rather than wait_for, which can swallow a cancellation on Python 3.11.
                    async with asyncio.timeout(wait):
                        await self.runtime.changed.wait()
