"""``GET /api/events/schemas[/{type}]``: the account events' JSON Schemas, for consumers' validators and generators."""

from __future__ import annotations

from typing import Any

from litestar import Controller, get

from app.core.errors import AppError, error_responses
from app.core.openapi import PathOnlyOperation
from app.events.schemas import event_schemas

SCHEMA_MEDIA_TYPE = "application/schema+json"


class UnknownEventType(AppError):
    status_code = 404
    code = "unknown_event_type"
    message = "No account event has that type: GET /api/events/schemas lists them."


class EventSchemasController(Controller):
    path = "/api/events/schemas"
    tags = ["account events"]

    @get("/", summary="The account event types that have a schema", operation_id="listEventTypes")
    async def types(self) -> dict[str, Any]:
        return {"message": "Account event types", "types": sorted(event_schemas())}

    @get(
        "/{event_type:str}",
        summary="The JSON Schema of one account event type",
        media_type=SCHEMA_MEDIA_TYPE,
        responses=error_responses(404),
        operation_id="getEventSchema",
        operation_class=PathOnlyOperation,  # a text segment cannot fail validation: no 400
    )
    async def schema(self, event_type: str) -> dict[str, Any]:
        schemas = event_schemas()
        if event_type not in schemas:
            raise UnknownEventType()
        return schemas[event_type]
