from typing import Annotated

from fastapi import Depends, Path

from service.auth.dependencies import ItemsWriter
from service.dependencies import SessionDep
from service.items import service
from service.items.models import Item
from service.schemas import MAX_ID

ItemId = Annotated[int, Path(ge=1, le=MAX_ID)]


async def visible_item(session: SessionDep, viewer: ItemsWriter, item_id: ItemId) -> Item:
    """The item the viewer may change, or a 404."""
    return await service.get_visible_item(session=session, viewer=viewer, item_id=item_id)


VisibleItem = Annotated[Item, Depends(visible_item)]
