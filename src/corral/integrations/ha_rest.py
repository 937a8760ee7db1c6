"""A client of Home Assistant's REST API (`GET /api/states/<entity>`, `POST /api/services/<domain>/
<service>`) with a long-lived access token; every failure becomes an error that says what to do."""

from __future__ import annotations

import re
from typing import Any

import httpx

from corral.integrations.settings import HomeAssistantConfig

ENTITY_ID = re.compile(r"^[a-z0-9_]+\.[a-z0-9_]+$")
NAME = re.compile(r"^[a-z0-9_]+$")


class HomeAssistantError(Exception):
    """Home Assistant refused or could not be reached; the message says what to do."""


class HomeAssistantClient:
    def __init__(
        self, config: HomeAssistantConfig, token: str, client: httpx.AsyncClient | None = None
    ) -> None:
        if config.url is None:
            raise HomeAssistantError("agent.tools.home_assistant.url is not set")
        self.config = config
        self.url: str = config.url
        self._token = token
        self._client = client

    async def get_state(self, entity_id: str) -> dict[str, Any]:
        if not ENTITY_ID.match(entity_id):
            raise HomeAssistantError(f"{entity_id!r} is not an entity id; they look like light.kitchen")
        data = await self._request("GET", f"/api/states/{entity_id}", what=f"entity {entity_id}")
        if not isinstance(data, dict):
            raise HomeAssistantError(f"Home Assistant answered {entity_id} with {type(data).__name__}")
        return data

    async def call_service(self, domain: str, service: str, data: dict[str, Any]) -> list[Any]:
        """Call a service; Home Assistant answers with the states it changed."""
        if not NAME.match(domain) or not NAME.match(service):
            raise HomeAssistantError(
                f"{domain}.{service} is not a service name; they look like light.turn_on"
            )
        answer = await self._request(
            "POST", f"/api/services/{domain}/{service}", json=data, what=f"service {domain}.{service}"
        )
        return answer if isinstance(answer, list) else [answer]

    async def _request(self, method: str, path: str, *, what: str, json: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {self._token}", "Content-Type": "application/json"}
        client = self._client or httpx.AsyncClient(timeout=self.config.timeout_s, trust_env=False)
        try:
            response = await client.request(method, self.url + path, headers=headers, json=json)
        except httpx.TimeoutException:
            raise HomeAssistantError(
                f"Home Assistant at {self.url} did not answer within {self.config.timeout_s:g} s; "
                "is it busy or down?"
            ) from None
        except httpx.HTTPError as exc:
            raise HomeAssistantError(
                f"cannot reach Home Assistant at {self.url} ({type(exc).__name__}); check that it runs and "
                "agent.tools.home_assistant.url"
            ) from None
        finally:
            if self._client is None:
                await client.aclose()
        status = response.status_code
        if status == 401:
            raise HomeAssistantError(
                "Home Assistant refused the token (401); create a new long-lived access token in your HA "
                "profile and put it in agent.tools.home_assistant.token_file"
            )
        if status == 404:
            raise HomeAssistantError(
                f"Home Assistant does not know {what} (404); check the name in Developer tools"
            )
        if status == 400:
            raise HomeAssistantError(
                f"Home Assistant rejected the call to {what} (400): {response.text[:300]}"
            )
        if status >= 400:
            raise HomeAssistantError(f"Home Assistant answered {status} for {what}: {response.text[:300]}")
        try:
            return response.json()
        except ValueError:
            raise HomeAssistantError(f"Home Assistant's answer for {what} is not JSON") from None
