from typing import Annotated

from fastapi import Depends, Path

from service.auth.dependencies import CurrentPrincipal
from service.dependencies import SessionDep
from service.schemas import MAX_ID
from service.service_accounts import service
from service.service_accounts.models import ApiKey, ServiceAccount

ServiceAccountId = Annotated[int, Path(ge=1, le=MAX_ID)]
ApiKeyId = Annotated[str, Path(pattern=r"^[0-9a-f]{16}$", description="The key's public id.")]


async def owned_account(
    account_id: ServiceAccountId, owner: CurrentPrincipal, session: SessionDep
) -> ServiceAccount:
    return await service.get_account(session=session, owner=owner, account_id=account_id)


OwnedAccount = Annotated[ServiceAccount, Depends(owned_account)]


async def owned_key(key_id: ApiKeyId, account: OwnedAccount, session: SessionDep) -> ApiKey:
    return await service.get_key(session=session, account=account, key_id=key_id)


OwnedKey = Annotated[ApiKey, Depends(owned_key)]
