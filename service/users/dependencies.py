from typing import Annotated

from fastapi import Depends, Path

from service.dependencies import SessionDep
from service.schemas import MAX_ID
from service.users import service
from service.users.models import User


async def valid_user_id(
    session: SessionDep, user_id: Annotated[int, Path(ge=1, le=MAX_ID)]
) -> User:
    return await service.get_user(session=session, user_id=user_id)


UserById = Annotated[User, Depends(valid_user_id)]
